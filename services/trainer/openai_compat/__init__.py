"""OpenAI's fine-tuning API on the trainer, so the `openai` SDK drives DPO jobs:

    client = openai.OpenAI(base_url=f"{trainer}/v1", api_key=key)
    file = client.files.create(file=open("prefs.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=file.id,
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})

A translation layer, nothing more: files are the trainer's datasets (same ids, same
validation), jobs are its DPO jobs (same queue, same ids, same submission checks), events are
its event stream, `fine_tuned_model` is the registered adapter's name, which is the name
vLLM serves it under. The routes are api/routes/openai_files.py and openai_fine_tuning.py.

- models.py: the request and response bodies, as OpenAI names them.
- conversion.py: OpenAI's preference rows -> prompt/chosen/rejected rows.
- hyperparams.py: `method.dpo.hyperparameters` and `cai_spec` -> a DpoJobSpec, and back.
- views.py: trainer records -> OpenAI objects.
- handler.py: the operations, over the trainer's state.
- errors.py: OpenAI's error body on these routes.
"""

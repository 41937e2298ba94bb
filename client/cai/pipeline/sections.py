"""What every config section is built from: `Section` (unknown keys, inf and nan refused) and
`SamplingConfig`, the sampling knobs of one step's requests; `EndpointConfig`, one server.

A step module declares its own section from these (cai.pipeline.steps); `PipelineConfig`
(cai.pipeline.config) gathers the sections of a run.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cai.pipeline.prompts import MAX_STOP_STRINGS


class Section(BaseModel):
    # `.inf` and `.nan` are valid YAML floats; no knob of a run means anything at either.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SamplingConfig(Section):
    temperature: float = Field(ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(ge=1)
    stop: list[str] | None = Field(
        default=None,
        max_length=MAX_STOP_STRINGS,
        description="Stop strings (at most 4: vLLM refuses more); None uses the template's "
        "`stop` header.",
    )


class EndpointConfig(Section):
    url: str = Field(description="Base URL of a vLLM (OpenAI-compatible) server, without /v1.")
    concurrency: int = Field(
        default=64,
        ge=1,
        description="Requests in flight at most: keep vLLM's batch full. Set it a little above "
        "the server's batch (its max_num_seqs, e.g. 80 for 64) so the server's queue never "
        "empties while the client turns an answer around (docs/benchmarks.md, item 2).",
    )
    api_key_env: str | None = Field(
        default="CAI_GENERATOR_API_KEY",
        description="Environment variable holding the server's API key (unset: no key sent).",
    )
    gpus: float = Field(default=1.0, ge=0.0, description="GPUs behind this endpoint (for cost).")
    timeout_s: float = Field(default=600.0, gt=0.0, description="Seconds one request may take.")

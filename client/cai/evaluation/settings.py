"""What the held-out evaluation is asked to do (`EvalSettings`), and the error it raises when
it cannot do it as asked (`EvaluationError`).

    settings = EvalSettings(max_tokens=128, judge=False)   # the `evaluation:` of a run config
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EvaluationError(RuntimeError):
    """The evaluation cannot run as asked; the message says what to change."""


class EvalSettings(BaseModel):
    """Knobs of the held-out evaluation (the `evaluation:` section of a `cai run` config)."""

    # A misspelt knob is refused, not ignored; `.inf` / `.nan` mean nothing for any of them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    heldout: str | None = Field(
        default=None, description="Held-out set file; None: the packaged heldout_v1.yaml."
    )
    max_tokens: int = Field(default=256, ge=1, description="Longest answer, in tokens.")
    temperature: float = Field(
        default=0.0, ge=0.0, description="0: greedy, so stages differ only by their weights."
    )
    seed: int = Field(
        default=0, ge=0, description="Picks the few-shot examples and sampling seeds."
    )
    few_shot: int | None = Field(
        default=None,
        ge=0,
        description="Examples before each instruction; None: the pipeline's responses.few_shot.",
    )
    concurrency: int = Field(default=16, ge=1, description="Instructions in flight.")
    beta: float = Field(default=0.1, gt=0.0, description="DPO beta of the implicit reward.")
    eos_token: str | None = Field(
        default="auto",
        description="Appended to chosen/rejected when scoring pairs, as TRL does in training. "
        "`auto`: read it from the served base model's folder (tokenizer_config.json) when "
        "visible from the client; a string: that text (e.g. '<|endoftext|>'); None: none.",
    )
    judge: bool = Field(default=True, description="Run the model judge (rules always run).")


__all__ = ["EvalSettings", "EvaluationError"]

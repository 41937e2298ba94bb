"""Request and response models for vLLM's OpenAI-compatible endpoints, as the client uses them.

The wire models (`CompletionRequest`, `CompletionResponse`, ...) mirror what vLLM sends and
ignore fields this project does not read; `CompletionResult` is what `GeneratorClient.complete`
returns: the choices grouped per prompt, in prompt order.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    # vLLM adds fields release by release; the client reads only what it needs.
    model_config = ConfigDict(extra="ignore")


class CompletionRequest(BaseModel):
    """The body of POST /v1/completions (fields left as None are not sent)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: list[str] = Field(min_length=1, description="One entry per prompt; batched by vLLM.")
    n: int = Field(default=1, ge=1, description="Completions per prompt.")
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Tokens to generate; None = vLLM's default (16); 0 only scores (with echo).",
    )
    stop: list[str] | None = Field(
        default=None, description="Stop strings, matched on text (multi-token strings work)."
    )
    logprobs: int | None = Field(
        default=None,
        ge=0,
        description="Log-probabilities of each sampled token plus this many alternatives.",
    )
    echo: bool | None = Field(
        default=None, description="Prepend the prompt (and, with logprobs, its token log-probs)."
    )
    prompt_logprobs: int | None = Field(
        default=None, ge=0, description="vLLM extension: log-probs of every prompt token."
    )
    return_token_ids: bool | None = Field(
        default=None, description="vLLM extension: prompt and output token ids in each choice."
    )
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vLLM sampling parameters (top_k, min_p, ...), sent as they are.",
    )

    def body(self) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True, exclude={"extra"})
        body.update(self.extra)
        return body


class TokenLogprobs(_Wire):
    """OpenAI-shaped log-probabilities of a choice's tokens (prompt tokens first with echo)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class WireLogprob(_Wire):
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class WireChoice(_Wire):
    index: int
    text: str
    logprobs: TokenLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[str, WireLogprob] | None] | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class Usage(_Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionResponse(_Wire):
    id: str
    model: str
    choices: list[WireChoice]
    usage: Usage


class PromptTokenLogprob(BaseModel):
    """One prompt token's log-probability under the model (vLLM `prompt_logprobs`)."""

    token_id: int | None = Field(default=None, description="Known when token ids were returned.")
    token: str | None = None
    logprob: float
    rank: int | None = None
    top: dict[str, float] = Field(
        default_factory=dict, description="Decoded token -> log-prob of the alternatives."
    )


class Choice(BaseModel):
    """One completion of one prompt."""

    text: str
    finish_reason: str | None = Field(
        default=None, description="`stop` (EOS or a stop string) or `length` (max_tokens)."
    )
    stop_reason: int | str | None = Field(
        default=None,
        description="The stop string (or token id) that ended it; None for EOS or length.",
    )
    logprobs: TokenLogprobs | None = Field(
        default=None, description="Per-token log-probs when `logprobs` was asked."
    )
    prompt_logprobs: list[PromptTokenLogprob | None] | None = Field(
        default=None,
        description="Per prompt token (the first is None: nothing predicts it), when asked.",
    )
    token_ids: list[int] | None = None

    @property
    def token_logprobs(self) -> list[float]:
        """Log-probs of the generated tokens (empty when not asked)."""
        if self.logprobs is None:
            return []
        return [lp for lp in self.logprobs.token_logprobs if lp is not None]


class CompletionResult(BaseModel):
    """`choices[i]` holds the `n` completions of `prompts[i]`."""

    id: str
    model: str
    prompts: list[str]
    choices: list[list[Choice]]
    usage: Usage

    @property
    def texts(self) -> list[list[str]]:
        return [[choice.text for choice in group] for group in self.choices]

    @classmethod
    def from_response(
        cls, response: CompletionResponse, prompts: list[str], n: int
    ) -> CompletionResult:
        """Group vLLM's flat choice list (index = prompt * n + sample) per prompt."""
        expected = len(prompts) * n
        if len(response.choices) != expected:
            raise ValueError(
                f"expected {expected} choices ({len(prompts)} prompts x n={n}), "
                f"got {len(response.choices)}"
            )
        groups: list[list[Choice]] = [[] for _ in prompts]
        for wire in sorted(response.choices, key=lambda c: c.index):
            groups[wire.index // n].append(_choice(wire))
        return cls(
            id=response.id,
            model=response.model,
            prompts=prompts,
            choices=groups,
            usage=response.usage,
        )


def _choice(wire: WireChoice) -> Choice:
    prompt_logprobs: list[PromptTokenLogprob | None] | None = None
    if wire.prompt_logprobs is not None:
        ids = wire.prompt_token_ids
        prompt_logprobs = [
            _prompt_token(entry, ids[i] if ids is not None and i < len(ids) else None)
            for i, entry in enumerate(wire.prompt_logprobs)
        ]
    return Choice(
        text=wire.text,
        finish_reason=wire.finish_reason,
        stop_reason=wire.stop_reason,
        logprobs=wire.logprobs,
        prompt_logprobs=prompt_logprobs,
        token_ids=wire.token_ids,
    )


def _prompt_token(
    entry: dict[str, WireLogprob] | None, token_id: int | None
) -> PromptTokenLogprob | None:
    if entry is None:
        return None
    # vLLM keys the dict by token id: the actual prompt token plus the top-k alternatives.
    # Without ids, the actual token is the only entry when prompt_logprobs=0; otherwise
    # the entry whose id we know is it.
    actual_key = str(token_id) if token_id is not None else None
    if actual_key is None or actual_key not in entry:
        actual_key = next(iter(entry))
    actual = entry[actual_key]
    top = {
        (lp.decoded_token if lp.decoded_token is not None else key): lp.logprob
        for key, lp in entry.items()
        if key != actual_key
    }
    return PromptTokenLogprob(
        token_id=int(actual_key) if actual_key.lstrip("-").isdigit() else token_id,
        token=actual.decoded_token,
        logprob=actual.logprob,
        rank=actual.rank,
        top=top,
    )


class ModelCard(_Wire):
    """An entry of GET /v1/models: the base (parent None) or a LoRA adapter (parent = base)."""

    id: str
    root: str | None = Field(default=None, description="Model path of the base; adapter path.")
    parent: str | None = Field(default=None, description="The base's served name, for adapters.")
    max_model_len: int | None = None
    owned_by: str | None = None


class Tokenization(_Wire):
    """vLLM's /tokenize answer: the ids and the served context length."""

    tokens: list[int]
    count: int | None = None
    max_model_len: int | None = None


class ModelList(_Wire):
    data: list[ModelCard]


class ErrorInfo(_Wire):
    """vLLM's error body: `{"error": {"message", "type", "param", "code"}}`."""

    message: str
    type: str | None = None
    param: str | None = None
    code: int | None = None


class ErrorBody(_Wire):
    error: ErrorInfo

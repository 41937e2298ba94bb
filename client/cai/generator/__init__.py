"""Client side of the generator (vLLM): typed async client, errors, and adapter publishing.

from cai.generator import GeneratorClient, publish, adapter_version_name

async with GeneratorClient("http://127.0.0.1:8000", max_retries=4) as gen:
    result = await gen.complete(prompts, model="tiny", max_tokens=64, stop=["###END###"])
    record = await publish(gen, adapter_dir, adapter_version_name(1, job_id),
                           base_model_name="tiny")
"""

from cai.generator.client import RETRY_STATUSES, GeneratorClient
from cai.generator.errors import (
    AdapterInvalid,
    AdapterNameTaken,
    AdapterNotListed,
    AdapterProbeFailed,
    AdapterRankTooHigh,
    GeneratorAuthError,
    GeneratorBadRequest,
    GeneratorConnectionError,
    GeneratorError,
    GeneratorNotFound,
    GeneratorRateLimited,
    GeneratorResponseError,
    GeneratorServerError,
    GeneratorStatusError,
    GeneratorTimeout,
    PublishError,
)
from cai.generator.publish import (
    DEFAULT_PROBE_PROMPT,
    AdapterInfo,
    ProbeResult,
    PublishRecord,
    adapter_version_name,
    check_adapter,
    probe_adapter,
    publish,
)
from cai.generator.types import (
    Choice,
    CompletionRequest,
    CompletionResult,
    ModelCard,
    PromptTokenLogprob,
    Tokenization,
    TokenLogprobs,
    Usage,
)

__all__ = [
    "DEFAULT_PROBE_PROMPT",
    "RETRY_STATUSES",
    "AdapterInfo",
    "AdapterInvalid",
    "AdapterNameTaken",
    "AdapterNotListed",
    "AdapterProbeFailed",
    "AdapterRankTooHigh",
    "Choice",
    "CompletionRequest",
    "CompletionResult",
    "GeneratorAuthError",
    "GeneratorBadRequest",
    "GeneratorClient",
    "GeneratorConnectionError",
    "GeneratorError",
    "GeneratorNotFound",
    "GeneratorRateLimited",
    "GeneratorResponseError",
    "GeneratorServerError",
    "GeneratorStatusError",
    "GeneratorTimeout",
    "ModelCard",
    "ProbeResult",
    "PromptTokenLogprob",
    "PublishError",
    "PublishRecord",
    "TokenLogprobs",
    "Tokenization",
    "Usage",
    "adapter_version_name",
    "check_adapter",
    "probe_adapter",
    "publish",
]

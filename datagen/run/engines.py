"""The engines of one run: one per distinct model configuration, shared by every step that asks
for it (the generator, a judge, a revise or llm step naming the same model and compatible engine
settings), and at most one started at a time: a step that needs another model gets it after the
previous engine was closed (two 7B engines at gpu_memory_utilization 0.9 do not fit on one GPU,
and vLLM frees GPU memory reliably only once its engine core is shut down).

A pool belongs to one run (datagen.run.executor.run_pipeline creates and closes it) or to a caller
that runs several recipes in one process and keeps its engines open between them; steps get
leases: a lease's close() ends the step's use, not the engine, which stays up for the next step
of the same model until the run ends or another model is needed. Every engine call made through
a lease is routed by the pool's EngineOutput (datagen.run.console), so engine logs land in
OUT/run/engine.log.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from datagen.llm import Backend, engine_identity
from datagen.llm.base import Batch, Generation, stream
from datagen.llm.stage_model import StageModel
from datagen.rows import BackendConfig, SamplingConfig
from datagen.run.console import EngineOutput


class EnginePool:
    """Engines keyed by datagen.llm.engine_identity (the model and the engine settings; not the
    sampling, which travels per call, nor the engine seed, since every request carries its own).

    `start(config)` opens an engine when given (tests count starts with it); otherwise each engine
    is opened by the opener of the first step that asks for it. `output` routes engine output
    (default: none, the engines print where they print)."""

    def __init__(self, start: Callable[[BackendConfig], Backend] | None = None, output: EngineOutput | None = None):
        self.start, self.output = start, output or EngineOutput(None)
        self.engines: dict[str, Backend] = {}
        self.loads = 0  # engines started by this pool so far

    @contextmanager
    def routed_to(self, output: EngineOutput) -> Iterator["EnginePool"]:
        """Engine output goes to `output` inside (one run's engine.log), to the pool's own after.
        What an engine writes from a process of its own (vLLM's engine core on GPU) goes where
        that process's output went when it started: the log of the run that started the engine."""
        previous, self.output = self.output, output
        try:
            yield self
        finally:
            self.output = previous

    def acquire(self, config: BackendConfig, opener: Callable[[], Backend]) -> "Lease":
        """A lease on the engine for `config`: the open one when its identity matches, else a new
        one, opened after every other engine of the pool was closed."""
        key = engine_identity(config)
        engine = self.engines.get(key)
        if engine is None:
            self.release()
            with self.output.routed():
                engine = self.start(config) if self.start is not None else opener()
            self.engines[key] = engine
            self.loads += 1
        return Lease(self, key, engine)

    def forget(self) -> None:
        """Empty the prefix cache of every open engine that keeps one (vLLM), so that a run on a
        kept engine is batched as on a fresh one: cached prompt blocks change the batches' shapes,
        and with them (on CPU, in bfloat16) a near-tie token now and then."""
        for engine in self.engines.values():
            reset = getattr(engine, "reset_prefix_cache", None)
            if reset is not None:
                with self.output.routed():
                    reset()

    def opener(self, config: BackendConfig, opener: Callable[[], Backend]) -> Callable[[], Backend]:
        """An opener (what the executor's runners call) that leases from the pool."""
        return lambda: self.acquire(config, opener)

    def share(self, steps: Iterable[Any]) -> None:
        """Let every model a step holds (a StageModel attribute: judge, revise, llm, converse)
        open through the pool."""
        for step in steps:
            for value in vars(step).values():
                if isinstance(value, StageModel):
                    value.engines = self

    def release(self) -> None:
        """Close every engine (a lease still held fails on its next call)."""
        while self.engines:
            _, engine = self.engines.popitem()
            with self.output.routed():
                engine.close()

    close = release

    def __enter__(self) -> "EnginePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        raise TypeError("an EnginePool holds this process's engines and cannot be sent elsewhere")


class Lease:
    """A step's view of a pooled engine: the Backend protocol plus `stream`; close() ends the
    lease only."""

    def __init__(self, pool: EnginePool, key: str, engine: Backend):
        self.pool, self.key, self.engine = pool, key, engine
        self.model_name = engine.model_name

    def _live(self) -> Backend:
        if self.pool.engines.get(self.key) is not self.engine:
            raise RuntimeError(f"the engine of {self.model_name!r} was closed: another model was started after this lease")
        return self.engine

    def generate(self, requests, sampling: SamplingConfig) -> list[Generation]:
        engine = self._live()
        with self.pool.output.routed():
            return engine.generate(requests, sampling)

    def stream(self, batches: Iterable[Batch]) -> Iterator[tuple[Any, list[Generation]]]:
        results = stream(self._live(), batches)
        try:
            while True:
                with self.pool.output.routed():
                    try:
                        item = next(results)
                    except StopIteration:
                        return
                yield item  # outside the routing: the caller prints its progress here
        finally:
            with self.pool.output.routed():
                results.close()

    def close(self) -> None:
        return None

"""The model a filter stage asks (the judge, the revise stage): its sampling, one completion per
request, and its backend, opened on the stage's first request and closed after its last shard, so
that a run whose batches give the stage no rows never starts an engine."""

from __future__ import annotations

from typing import Callable, ClassVar

from pydantic import model_validator

from datagen.llm.base import Backend, ChatRequest, Generation
from datagen.errors import DatagenError, first_line
from datagen.rows import BackendConfig, SamplingConfig


class OneCompletionSampling(SamplingConfig):
    """Sampling for a stage that reads one completion per request."""

    one_completion_because: ClassVar[str] = "the stage reads one completion per request"

    @model_validator(mode="after")
    def _one_completion(self) -> "OneCompletionSampling":
        if self.n != 1:
            raise ValueError(f"{self.one_completion_because}: n must be 1")
        return self


class StageModel:
    """A stage's backend: `factory` runs on the first request; a start that fails is a user error
    naming the stage's backend field, a call that fails is an error per request (a recorded
    verdict), except a DatagenError, which is the user's to act on (e.g. the openai backend's
    "every request failed; rerun to resume")."""

    def __init__(self, factory: Callable[[], Backend], stage: str, label: str, config: BackendConfig):
        self.factory, self.stage, self.label, self.config = factory, stage, label, config
        self.backend: Backend | None = None
        # The run's engines (datagen.run.engines.EnginePool), set by the executor: the model is then
        # leased from there (shared with other steps of the same model), `factory` opening it if
        # no step has yet.
        self.engines = None

    def open(self) -> Backend:
        if self.backend is None:
            try:
                self.backend = self.factory() if self.engines is None else self.engines.acquire(self.config, self.factory)
            except DatagenError:
                raise
            except Exception as err:  # noqa: BLE001 - engines fail in many ways; the user needs one line
                raise DatagenError(
                    f"cannot start the {self.stage} backend ({self.config.kind}, {self.config.model!r}): {first_line(err)}",
                    field=f"{self.label}.backend.model",
                ) from err
        return self.backend

    def ask(self, requests: list[ChatRequest], sampling: SamplingConfig) -> list[Generation]:
        """One backend call for all requests, in request order."""
        if not requests:
            return []
        backend = self.open()
        try:
            generations = backend.generate(requests, sampling)
        except DatagenError:
            raise
        except Exception as err:  # noqa: BLE001 - a broken call is a recorded verdict, not a crashed run
            return [Generation([], 0, error=f"{type(err).__name__}: {first_line(err, '')}") for _ in requests]
        if len(generations) != len(requests):
            message = f"backend returned {len(generations)} results for {len(requests)} requests"
            return [Generation([], 0, error=message) for _ in requests]
        return generations

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

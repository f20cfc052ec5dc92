"""The one protocol every inference backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol

from datagen.errors import DatagenError
from datagen.rows import SamplingConfig


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    seed: int
    # Optional JSON schema the completions must follow (structured output).
    json_schema: dict[str, Any] | None = None
    # This request's own sampling parameters (drawn per prompt, e.g. its temperature), used instead
    # of the call's; `n` must stay the call's.
    sampling: SamplingConfig | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class Generation:
    completions: list[Completion]
    prompt_tokens: int
    # Set when this request failed on its own (the rest of the batch is still valid).
    error: str | None = None
    # With an error: it may pass on a later try (connection, timeout, 408/429/5xx after the retries),
    # so the shard holding it is not finished and a rerun sends the request again.
    transient: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Outage(DatagenError):
    """Every request of a batch failed for a transient reason (the server is gone): raised by a
    backend so that the run stops; `generations` are the failed requests' results, so that an
    executor can still record which prompts to send again."""

    def __init__(self, message: str, generations: list[Generation], source: str | None = None, field: str | None = None):
        super().__init__(message, source, field)
        self.generations = generations


class Backend(Protocol):
    model_name: str

    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig) -> list[Generation]:
        """n completions for every request, in request order."""
        ...

    def close(self) -> None: ...


# A batch to stream: (key, requests, sampling); `key` is the caller's (e.g. a shard number).
Batch = tuple[Any, list[ChatRequest], SamplingConfig]


def stream(backend: Any, batches: Iterable[Batch]) -> Iterator[tuple[Any, list[Generation]]]:
    """(key, generations in request order) for each batch, as soon as its last request is done,
    in the order the batches finish. A backend with its own `stream` (vllm, openai) keeps its
    engine or connection pool busy across batch boundaries, taking the next batch from `batches`
    while the current ones are still running; any other backend answers one `generate` call per
    batch, in order. After a batch whose every request failed for a transient reason (the server
    is gone) no further batch is taken: the batches already sent are still yielded, so that a
    caller that records them before it stops keeps every answer it got. Closing the iterator
    early cancels the requests still in flight: a batch that was not yielded was not answered, so
    a caller that records only yielded batches sends every request exactly once across reruns."""
    outage = False

    def fed() -> Iterator[Batch]:
        for batch in batches:
            if outage:
                return
            yield batch

    own = getattr(backend, "stream", None)
    for key, generations in own(fed()) if own is not None else _one_call_each(backend, fed()):
        outage = outage or bool(generations) and all(g.transient for g in generations)
        yield key, generations


def _one_call_each(backend: Any, batches: Iterable[Batch]) -> Iterator[tuple[Any, list[Generation]]]:
    for key, requests, sampling in batches:
        try:
            generations = backend.generate(requests, sampling) if requests else []
        except Outage as err:  # every request failed transiently: the caller records them and stops
            generations = err.generations
        yield key, generations

"""The one protocol every inference backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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

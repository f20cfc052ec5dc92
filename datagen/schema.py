"""Pydantic models shared across the package: sampling, backend, template, and record shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Base for every user-written config: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class SamplingConfig(StrictModel):
    n: int = Field(1, ge=1, le=1024, description="completions per prompt")
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    min_tokens: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(None, ge=0, description="base seed for sampling; the recipe seed when unset")

    @model_validator(mode="after")
    def _min_le_max(self) -> "SamplingConfig":
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is larger than max_tokens ({self.max_tokens})")
        return self


class BackendConfig(StrictModel):
    kind: Literal["vllm", "scripted"] = "vllm"
    model: str = Field("embedded", description="'embedded' (the packaged CPU default), a local path, or a hub id")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    # Passed to vllm.LLM as keyword arguments (tensor_parallel_size, gpu_memory_utilization, ...).
    engine: dict[str, Any] = Field(default_factory=dict)
    # scripted backend only: canned completions, picked deterministically per request and sample.
    responses: list[str] = Field(default_factory=list)


ExpansionMode = Literal["sample", "product"]


class ExpansionConfig(StrictModel):
    mode: ExpansionMode = "sample"
    # slot -> {value (or id for mapping values) -> weight}; unlisted values weigh 1.
    weights: dict[str, dict[str, float]] = Field(default_factory=dict)


SlotValue = str | int | float | dict[str, Any]


class TemplateSpec(StrictModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    system: str | None = None
    user: str
    slots: dict[str, list[SlotValue]] = Field(default_factory=dict)
    where: str | None = None
    reference: str | None = None
    tests: str | None = None
    expansion: ExpansionConfig = Field(default_factory=ExpansionConfig)


# Columns that every prompt row carries (provenance); slot columns for the common slots are
# promoted to top-level so that users can filter on them without parsing JSON.
PROMOTED_SLOTS = ("persona", "difficulty", "topic", "task_type")

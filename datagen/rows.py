"""Pydantic models shared across the package: sampling, backend, template, and record shapes."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer, model_validator

from datagen.paths import anchor_model


class StrictModel(BaseModel):
    """Base for every user-written config: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


MAX_TOKENS = 1 << 20  # longer than any model's context


class SamplingConfig(StrictModel):
    n: int = Field(1, ge=1, le=1024, description="completions per prompt")
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="base seed for sampling; the recipe seed when unset")
    json_schema: dict[str, Any] | None = Field(None, description="structured output: every completion follows this JSON schema")

    @model_serializer(mode="wrap")
    def _without_unset_schema(self, handler: Any) -> dict[str, Any]:
        # Left out while unset, so that fingerprints, resume keys and the `sampling` column of runs
        # made before structured output existed stay as they were.
        data = handler(self)
        if data.get("json_schema") is None:
            data.pop("json_schema", None)
        return data

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as err:
                raise ValueError(f"not a valid JSON schema: {err.message}") from None
        return schema

    @model_validator(mode="after")
    def _min_le_max(self) -> "SamplingConfig":
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is larger than max_tokens ({self.max_tokens})")
        return self


OPENAI_ONLY_FIELDS = ("base_url", "api_key_env", "extra_body")
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class BackendConfig(StrictModel):
    kind: Literal["vllm", "scripted", "openai"] = "vllm"
    model: str = Field("embedded", description="'embedded' (the packaged CPU default), a local path, or a hub id; openai: the server's model name")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    # Passed to vllm.LLM as keyword arguments (tensor_parallel_size, gpu_memory_utilization, ...).
    engine: dict[str, Any] = Field(default_factory=dict)
    # scripted backend only: canned completions, picked deterministically per request and sample.
    responses: list[str] = Field(default_factory=list)
    # openai backend only: any OpenAI-compatible server (vllm serve, SGLang, TGI, hosted APIs).
    base_url: str | None = Field(None, pattern=r"^https?://\S+$", description="the API root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(
        None, pattern=ENV_NAME, description="name of the environment variable holding the API key (never the key)"
    )
    max_concurrency: int = Field(16, ge=1, le=4096, description="requests in flight at once")
    max_retries: int = Field(5, ge=0, le=20, description="retries per request on 408/409/429/5xx, timeouts and dropped connections")
    timeout_s: float = Field(600.0, gt=0, le=86_400, allow_inf_nan=False, description="seconds per attempt")
    # Sent as extra JSON fields of every request: server-specific parameters (vLLM: top_k, ...).
    extra_body: dict[str, Any] = Field(default_factory=dict)
    system_prompt: Literal["keep", "fold"] = Field(
        "keep", description="openai: 'fold' sends the system message as the start of the first user turn (servers without a system role)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_key_in_recipe(cls, data: Any) -> Any:
        # Raised here, on the whole mapping, so that the error line never echoes a key back.
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("api_key: an API key does not belong in a recipe; export it and name the variable in api_key_env")
        if isinstance(data, dict) and data.get("api_key_env") is not None and not re.fullmatch(ENV_NAME, str(data["api_key_env"])):
            raise ValueError("api_key_env: must name an environment variable (letters, digits, _), not hold the key itself")
        return data

    @field_validator("model", mode="before")
    @classmethod
    def _local_model_path(cls, model: Any, info: ValidationInfo) -> Any:
        # A local model folder is a recipe path like any other; an openai model is the server's name.
        return model if info.data.get("kind") == "openai" else anchor_model(model, info)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "BackendConfig":
        if self.kind == "openai":
            if self.base_url is None:
                raise ValueError("base_url: required for kind openai (e.g. http://127.0.0.1:8000/v1)")
            if self.model == "embedded":
                raise ValueError("model: name the model the server serves (the 'embedded' model is only for kind vllm)")
        else:
            stray = [name for name in OPENAI_ONLY_FIELDS if getattr(self, name)]  # set to something, not left empty
            if self.system_prompt != "keep":
                stray.append("system_prompt")
            if stray:
                raise ValueError(f"{stray[0]}: only used with kind openai")
        return self


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

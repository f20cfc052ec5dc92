"""Inference backends behind one protocol (see base.py)."""

from __future__ import annotations

import json

from datagen.llm.base import Backend, ChatRequest, Completion, Generation
from datagen.errors import DatagenError
from datagen.rows import BackendConfig


def make_backend(config: BackendConfig, seed: int) -> Backend:
    if config.kind == "scripted":
        from datagen.llm.scripted import ScriptedBackend

        return ScriptedBackend(config.responses)
    if config.kind == "openai":
        from datagen.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(config)  # seeds travel per request; the server has its own
    from datagen.llm.vllm_backend import VLLMBackend

    return VLLMBackend(config, seed)


def engine_identity(config: BackendConfig) -> str:
    """What makes two configs need two engines (datagen.run.engines): for vllm the model and the
    resolved engine settings; for the other kinds every field but the sampling. Never the seed:
    every request datagen sends carries its own."""
    if config.kind == "vllm":
        from datagen.llm.vllm_backend import engine_identity as vllm_identity

        return vllm_identity(config)
    fields = {name: getattr(config, name) for name in BackendConfig.model_fields if name != "sampling"}
    return json.dumps(fields, sort_keys=True, default=str)


def check_backend(config: BackendConfig, field: str = "backend") -> None:
    """What can be checked before any engine starts or any request goes out: a vllm model that
    exists, an openai API key variable that is set. `field` is where the config sits in the recipe."""
    try:
        if config.kind == "vllm":
            from datagen.llm.vllm_backend import check_model

            check_model(config.model)
        elif config.kind == "openai":
            from datagen.llm.openai_backend import api_key

            api_key(config)
    except DatagenError as err:
        if err.field and err.field.startswith("backend."):
            err.field = field + err.field.removeprefix("backend")
        raise


__all__ = ["Backend", "ChatRequest", "Completion", "Generation", "check_backend", "engine_identity", "make_backend"]

"""Inference backends behind one protocol (see base.py)."""

from __future__ import annotations

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


__all__ = ["Backend", "ChatRequest", "Completion", "Generation", "check_backend", "make_backend"]

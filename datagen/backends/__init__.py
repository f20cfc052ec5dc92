"""Inference backends behind one protocol (see base.py)."""

from __future__ import annotations

from datagen.backends.base import Backend, ChatRequest, Completion, Generation
from datagen.schema import BackendConfig


def make_backend(config: BackendConfig, seed: int) -> Backend:
    if config.kind == "scripted":
        from datagen.backends.scripted import ScriptedBackend

        return ScriptedBackend(config.responses)
    if config.kind == "openai":
        from datagen.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(config)  # seeds travel per request; the server has its own
    from datagen.backends.vllm_backend import VLLMBackend

    return VLLMBackend(config, seed)


__all__ = ["Backend", "ChatRequest", "Completion", "Generation", "make_backend"]

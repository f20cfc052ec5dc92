"""Deterministic canned completions, for unit tests of pipeline logic only."""

from __future__ import annotations

import hashlib

from datagen.llm.base import ChatRequest, Completion, Generation
from datagen.rows import SamplingConfig


class ScriptedBackend:
    model_name = "scripted"

    def __init__(self, responses: list[str]):
        self.responses = responses

    def _text(self, request: ChatRequest, index: int) -> str:
        user = request.messages[-1]["content"]
        if not self.responses:
            return f"Scripted answer {index} to: {user[:60]}"
        digest = hashlib.sha256(f"{request.seed}:{index}".encode()).digest()
        template = self.responses[int.from_bytes(digest[:4], "big") % len(self.responses)]
        return template.replace("{index}", str(index))

    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig) -> list[Generation]:
        out = []
        for request in requests:
            completions = []
            for i in range(sampling.n):
                words = self._text(request, i).split(" ")
                cut = words[: sampling.max_tokens]
                reason = "length" if len(cut) < len(words) else "stop"
                completions.append(Completion(" ".join(cut), reason, len(cut)))
            prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
            out.append(Generation(completions, prompt_tokens))
        return out

    def close(self) -> None:
        pass

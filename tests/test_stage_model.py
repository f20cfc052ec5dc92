"""The model a stage asks (datagen.llm.stage_model), shared by the judge and the revise stage."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from datagen.llm import ChatRequest
from datagen.llm.scripted import ScriptedBackend
from datagen.llm.stage_model import StageModel
from datagen.errors import DatagenError
from datagen.rows import BackendConfig, SamplingConfig
from datagen.steps.judge import JudgeConfig, JudgeSamplingConfig, JudgeStage
from datagen.steps.revise import ReviseConfig, ReviseSamplingConfig, ReviseStage
from helpers import ANSWER, RIGHT, RIGHT_TOO, WRONG, CountingFactory, ScriptedModel, samples_frame

ONE = SamplingConfig(n=1, max_tokens=20)


def requests(*texts: str) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": t}], seed=i) for i, t in enumerate(texts)]


def test_opened_on_the_first_request_once_and_closed_after():
    factory = CountingFactory(lambda: ScriptedModel([f"{ANSWER} minutes."]))
    model = StageModel(factory, "judge", "quality", BackendConfig(kind="scripted"))
    assert model.ask([], ONE) == [] and factory.started == [], "no rows, no engine"
    first = model.ask(requests("a", "b"), ONE)
    assert [g.completions[0].text for g in first] == ["210 minutes.", "210 minutes."]
    model.ask(requests("c"), ONE)
    [backend] = factory.started
    assert backend.requests == 3 and not backend.closed
    model.close()
    assert backend.closed and model.backend is None
    model.ask(requests("d"), ONE)
    assert len(factory.started) == 2 and factory.started[1] is not backend, "a closed model opens again when asked"


class Raising(ScriptedBackend):
    def __init__(self, error: Exception):
        super().__init__([])
        self.error = error

    def generate(self, requests, sampling):
        raise self.error


class Short(ScriptedBackend):
    def generate(self, requests, sampling):
        return super().generate(requests, sampling)[:-1]


def test_a_failing_call_is_an_error_per_request_but_a_user_error_is_raised():
    config = BackendConfig(kind="scripted")
    broken = StageModel(lambda: Raising(RuntimeError("CUDA error: device-side assert\nmore")), "judge", "judge", config)
    assert [g.error for g in broken.ask(requests("a", "b"), ONE)] == ["RuntimeError: CUDA error: device-side assert"] * 2
    short = StageModel(lambda: Short([]), "judge", "judge", config)
    assert [g.error for g in short.ask(requests("a", "b"), ONE)] == ["backend returned 1 results for 2 requests"] * 2

    # The openai backend's way to say the server is gone: the run stops, to be resumed, rather than
    # recording an error verdict for every row of every shard that follows.
    gone = DatagenError("every one of 2 requests failed (connection: refused); rerun the same command to resume", field="backend.base_url")
    batch = samples_frame({"p": [RIGHT, RIGHT_TOO]})
    for stage in (JudgeStage(JudgeConfig(rubric="helpfulness"), backend_factory=lambda: Raising(gone)),
                  ReviseStage(ReviseConfig(), backend_factory=lambda: Raising(gone))):
        with pytest.raises(DatagenError, match="rerun the same command to resume"):
            stage(batch)


def test_a_backend_that_cannot_start_names_the_stage_and_its_field():
    def cannot_start():
        raise OSError("model weights not found at /models/reviser\ndetail")

    stage = ReviseStage(ReviseConfig(name="fix", backend={"kind": "vllm", "model": "/models/reviser"}), backend_factory=cannot_start)
    batch = samples_frame({"p": [WRONG]})
    with pytest.raises(DatagenError, match=r"cannot start the revise backend \(vllm, '/models/reviser'\): model weights not found at /models/reviser$") as caught:
        stage(batch)
    assert caught.value.field == "fix.backend.model"


def test_one_completion_per_request_each_stage_says_why():
    with pytest.raises(ValidationError, match="the judge reads one verdict per request: n must be 1"):
        JudgeSamplingConfig(n=2)
    with pytest.raises(ValidationError, match="one critique and one revision per candidate: n must be 1"):
        ReviseSamplingConfig(n=3)
    assert (JudgeSamplingConfig().temperature, ReviseSamplingConfig().temperature) == (0.0, 0.7)

"""One engine per model per run (datagen.run.engines): the generator and a judge naming the same
model share one engine; a judge naming another model gets its own, opened only after the
generator's was closed; engine settings that differ make another engine, the engine seed does not."""

from __future__ import annotations

import json
import os
import sys

import polars as pl
import pytest

from datagen.llm import engine_identity
from datagen.recipe import load_recipe
from datagen.rows import BackendConfig
from datagen.run.engines import EnginePool
from datagen.run.executor import run_pipeline
from helpers import ScriptedModel

SCORES = {"helpfulness": 4, "correctness": 4, "instruction_following": 4, "clarity": 4}


class Engines:
    """An EnginePool `start` that records every engine it opens and closes, in order; each engine
    answers generation requests with text and structured (judge) requests with a verdict."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.started: list[ScriptedModel] = []

    def __call__(self, config: BackendConfig):
        events, model = self.events, config.model

        class Engine(ScriptedModel):
            def close(self) -> None:
                super().close()
                events.append(("close", model))

            def reset_prefix_cache(self) -> None:
                events.append(("forget", model))

        def reply(request, index):
            if request.json_schema is not None:
                return json.dumps({"rationale": f"judged by {model}", **SCORES})
            return f"An answer from {model}, number {index}, long enough to read."

        engine = Engine(reply=reply)
        engine.model_name = model
        self.events.append(("open", model))
        self.started.append(engine)
        return engine


def recipe(project, judge_model: str, judge_engine: dict | None = None, generator_engine: dict | None = None):
    vllm = lambda model, engine: {"kind": "vllm", "model": model, "engine": engine or {}}  # noqa: E731
    return load_recipe(project(
        backend=vllm("org/model-a", generator_engine) | {"sampling": {"n": 2, "max_tokens": 50}},
        stages=[{"stage": "finished"},
                {"stage": "judge", "rubric": "helpfulness", "min_score": 3, "seed": 99, "backend": vllm(judge_model, judge_engine)}],
    ))  # fmt: skip


def judged(out) -> pl.DataFrame:
    return pl.read_parquet(out / "run" / "stages" / "02_judge" / "*.parquet")


def test_generate_and_a_judge_of_the_same_model_share_one_engine(project, monkeypatch):
    engines = Engines()
    monkeypatch.setattr("datagen.run.executor.EnginePool", lambda: EnginePool(start=engines))  # the run's own pool
    result = run_pipeline(recipe(project, "org/model-a"), project.root / "out", progress=False)
    assert engines.events == [("open", "org/model-a"), ("close", "org/model-a")], "one start, closed when the run ends"
    [engine] = engines.started
    asked = [r for call in engine.calls for r in call.requests]
    assert sum(r.json_schema is None for r in asked) == 6 and sum(r.json_schema is not None for r in asked) == 12, \
        "6 prompts generated and their 12 samples judged, by the one engine"
    rows = judged(project.root / "out")
    assert rows.height == 12 and (rows["judge_rationale"] == "judged by org/model-a").all()
    assert result.rows_written == 12


def test_a_judge_of_another_model_starts_after_the_generator_was_closed(project):
    engines = Engines()
    with EnginePool(start=engines) as pool:
        run_pipeline(recipe(project, "org/model-b"), project.root / "out", progress=False, engines=pool)
        assert engines.events == [("open", "org/model-a"), ("close", "org/model-a"), ("open", "org/model-b")], \
            "the judge's engine, the last one, is left open in the caller's pool"
    assert engines.events[-1] == ("close", "org/model-b")
    assert (judged(project.root / "out")["judge_rationale"] == "judged by org/model-b").all()


def test_a_pool_the_caller_keeps_serves_the_next_run_without_another_start(project):
    engines = Engines()
    with EnginePool(start=engines) as pool:
        first = run_pipeline(recipe(project, "org/model-a"), project.root / "first", progress=False, engines=pool)
        second = run_pipeline(recipe(project, "org/model-a"), project.root / "second", progress=False, engines=pool)
        assert engines.events == [("open", "org/model-a"), ("forget", "org/model-a")] and pool.loads == 1, \
            "the second run finds the engine open and empties its prefix cache"
        third = run_pipeline(recipe(project, "org/model-b"), project.root / "third", progress=False, engines=pool)
        assert engines.events[2:] == [("forget", "org/model-a"), ("close", "org/model-a"), ("open", "org/model-b")], \
            "a run that needs another model closes the kept one first"
    assert engines.events[-1] == ("close", "org/model-b")
    assert first.rows_written == second.rows_written == third.rows_written == 12
    assert judged(project.root / "second").height == 12 and (judged(project.root / "third")["judge_rationale"] == "judged by org/model-b").all()


def test_each_run_on_a_kept_engine_writes_its_engine_output_to_its_own_log(project):
    calls = iter(range(1000))

    class Writing(ScriptedModel):
        def generate(self, requests, sampling):
            os.write(1, f"engine call {next(calls)}\n".encode())  # as a native library writes
            return super().generate(requests, sampling)

    with EnginePool(start=lambda config: Writing()) as pool:
        for name in ("first", "second"):
            run_pipeline(recipe(project, "org/model-a"), project.root / name, progress=False, engines=pool)
    first, second = ((project.root / name / "run" / "engine.log").read_text().split() for name in ("first", "second"))
    assert "call" in first and "call" in second, "each run's log has what the engine wrote during it"
    assert not set(first) & set(second) - {"engine", "call"}, "no call of one run is in the other's log"


def test_a_failed_run_closes_the_kept_engines(project):
    engines = Engines()

    def interrupted(requests, sampling):
        raise KeyboardInterrupt

    def start(config):
        engine = engines(config)
        engine.generate = interrupted
        return engine

    with EnginePool(start=start) as pool:
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(recipe(project, "org/model-a"), project.root / "out", progress=False, engines=pool)
        assert engines.events == [("open", "org/model-a"), ("close", "org/model-a")] and not pool.engines, \
            "an engine a failed run used is not handed to the next run"


def test_other_engine_settings_are_another_engine_the_seed_is_not(project):
    engines = Engines()
    with EnginePool(start=engines) as pool:
        run_pipeline(recipe(project, "org/model-a", judge_engine={"max_model_len": 1024}), project.root / "out", progress=False, engines=pool)
    assert [event for event, _ in engines.events] == ["open", "close", "open", "close"]

    same = BackendConfig(kind="vllm", model="org/model-a")
    assert engine_identity(same) == engine_identity(same.model_copy(update={"sampling": same.sampling.model_copy(update={"n": 8})}))
    # the judge's own compact-JSON setting is every engine's default: no second engine for it
    compact = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}
    assert engine_identity(same) == engine_identity(same.model_copy(update={"engine": compact}))
    assert engine_identity(same) != engine_identity(same.model_copy(update={"engine": {"gpu_memory_utilization": 0.5}}))
    openai = BackendConfig(kind="openai", model="m", base_url="http://127.0.0.1:1/v1")
    assert engine_identity(openai) != engine_identity(openai.model_copy(update={"base_url": "http://127.0.0.1:2/v1"}))


def test_a_lease_on_a_closed_engine_refuses_to_be_used():
    engines = Engines()
    pool = EnginePool(start=engines)
    first = pool.acquire(BackendConfig(kind="vllm", model="org/model-a"), lambda: None)
    again = pool.acquire(BackendConfig(kind="vllm", model="org/model-a"), lambda: None)
    assert again.engine is first.engine and pool.loads == 1
    first.close()
    assert not first.engine.closed, "a lease's close leaves the engine to the pool"
    pool.acquire(BackendConfig(kind="vllm", model="org/model-b"), lambda: None)
    assert first.engine.closed
    with pytest.raises(RuntimeError, match="was closed: another model was started"):
        first.generate([], BackendConfig(kind="vllm", model="x").sampling)
    pool.close()
    assert engines.events[-1] == ("close", "org/model-b")


NOISY = r"""
import logging, os, sys, warnings
from pathlib import Path
from datagen.llm import ChatRequest
from datagen.llm.scripted import ScriptedBackend
from datagen.rows import BackendConfig
from datagen.run.console import EngineOutput
from datagen.run.engines import EnginePool

logging.basicConfig(stream=sys.stdout, level=logging.INFO)  # a library's handler on the console, as vLLM sets one up


class Noisy(ScriptedBackend):
    # writes the ways vLLM and its libraries do: print, logging, warnings, native writes to fd 2
    def __init__(self):
        super().__init__([])
        print("INFO engine loading weights")

    def generate(self, requests, sampling):
        print("INFO engine says hello on stdout")
        logging.getLogger("vllm.noisy").warning("engine log record")
        warnings.warn("engine warning", UserWarning)
        os.write(2, b"[W native] engine message on fd 2\n")
        return super().generate(requests, sampling)


log = Path(sys.argv[1]) if sys.argv[1] != "-" else None
config = BackendConfig(kind="scripted")
pool = EnginePool(start=lambda config: Noisy(), output=EngineOutput(log))
lease = pool.acquire(config, lambda: None)
print("datagen line before")
lease.generate([ChatRequest([{"role": "user", "content": "hi"}], seed=1)], config.sampling)
print("datagen line after", file=sys.stderr)
pool.close()
"""
ENGINE_LINES = ("INFO engine loading weights", "INFO engine says hello on stdout", "engine log record", "engine warning",
                "[W native] engine message on fd 2")


def test_engine_output_goes_to_the_log_file_and_the_console_keeps_datagen_lines(tmp_path):
    import subprocess

    log = tmp_path / "run" / "engine.log"
    quiet = subprocess.run([sys.executable, "-c", NOISY, str(log)], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines() == ["datagen line before"] and quiet.stderr.splitlines() == ["datagen line after"]
    written = log.read_text()
    assert all(line in written for line in ENGINE_LINES), written

    verbose = subprocess.run([sys.executable, "-c", NOISY, "-"], capture_output=True, text=True, timeout=120)
    assert all(line in verbose.stdout + verbose.stderr for line in ENGINE_LINES), "--verbose: the console shows them"

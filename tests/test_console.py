"""The console of a run with the real engine: datagen's progress lines and funnel, nothing from
vLLM, torch or transformers (that goes to OUT/run/engine.log; --verbose shows it)."""

from __future__ import annotations

import pytest

from helpers import TINY_TEMPLATE, datagen_cli, write_yaml

# What vLLM, torch and transformers lines carry (log records, warnings, progress bars, native messages).
ENGINE_MARKS = ("vllm", "INFO", "WARNING", "Warning", "torch", "Loading", "(MainProcess", "[W", "transformers", "it/s]")


@pytest.mark.model
@pytest.mark.slow
def test_a_log_mode_run_shows_datagen_lines_only_and_engine_output_goes_to_engine_log(tmp_path):
    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)
    recipe = write_yaml(tmp_path / "pipelines" / "recipe.yaml", {
        "name": "quiet", "seed": 3, "templates": [{"name": "tiny", "count": 2}],
        "backend": {"kind": "vllm", "model": "embedded", "sampling": {"n": 1, "max_tokens": 12}},
        "stages": [{"stage": "finished"}], "execution": {"shard_size": 1},
    })  # fmt: skip
    out = tmp_path / "out"
    done = datagen_cli("run", recipe, "--out", out, "--progress", "log")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    noisy = [line for line in lines if any(mark in line for mark in ENGINE_MARKS)]
    assert noisy == [], noisy
    assert any(line.startswith("[1/2] generate: ") for line in done.stderr.splitlines()), done.stderr
    assert any(" in -> " in line for line in done.stdout.splitlines()) and "wrote " in done.stdout, done.stdout
    log = (out / "run" / "engine.log").read_text()
    assert "vllm" in log.lower() and "Loading" in log, "what the engine printed is kept in engine.log"


def test_verbose_and_progress_are_taken_by_every_command_that_runs_a_model():
    for command in ("run", "counterexamples"):
        shown = datagen_cli(command, "--help")
        assert shown.returncode == 0 and "--verbose" in shown.stdout and "--progress" in shown.stdout, (command, shown.stdout)

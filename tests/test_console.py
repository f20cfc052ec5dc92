"""The console of a run with the real engine: datagen's progress lines and funnel, nothing from
vLLM, torch or transformers (that goes to OUT/run/engine.log; --verbose shows it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, TINY_TEMPLATE, datagen_cli, write_yaml

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


def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    # `datagen ... | head`: the reader has closed the pipe; datagen stops without an "internal error"
    exe = Path(sys.executable).with_name("datagen")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before datagen writes a byte
    try:
        done = subprocess.run([str(exe), "preview", "quickstart", "-n", "2"], cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (128 + signal.SIGPIPE, "")

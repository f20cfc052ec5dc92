"""A run to a target with the real embedded model: a quickstart-like recipe stops once N rows
pass its filters, writes exactly N (the first kept, in shard order), and its card counts the
tokens the rows recorded."""

from __future__ import annotations

import json

import polars as pl
import pytest

from helpers import PIPELINES

pytestmark = [pytest.mark.model, pytest.mark.slow]

TARGET = 3


def test_quickstart_to_a_target_reaches_it(tmp_path, model_cli):
    out = tmp_path / "out"
    overrides = [
        "templates=[{name: math_word_problems, count: 8}, {name: assistant_requests, count: 8}]",
        "stages=[{stage: finished}, {stage: length, min_chars: 40}, {stage: dedup, threshold: 0.8}]",
        "backend.sampling.n=2", "backend.sampling.max_tokens=256", "execution.shard_size=4",
        f"output.target_rows={TARGET}", "output.max_candidates=32",
    ]
    result = model_cli("run", PIPELINES / "quickstart.yaml", "--out", out, "--progress", "log", *[a for o in overrides for a in ("--set", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"target {TARGET} rows reached" in result.stdout
    assert f"target {TARGET}:" in result.stderr  # the yield estimate after each wave

    rows = pl.read_parquet(out / "data" / "*.parquet")
    assert rows.height == TARGET
    assert all("SmolLM2-135M" in model for model in rows["model"])
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    used = manifest["target"]["shards_used"]
    assert manifest["target"]["reached"] and used < manifest["shards"]  # it stopped before the budget
    last = pl.concat([pl.read_parquet(out / "run" / "stages" / "03_dedup" / f"shard-{j:05d}.parquet") for j in range(used)])
    assert rows["candidate_id"].to_list() == last.filter(pl.col("keep"))["candidate_id"].head(TARGET).to_list()

    generated = pl.concat([pl.read_parquet(out / "run" / "stages" / "00_generate" / f"shard-{j:05d}.parquet") for j in range(used)])
    record = manifest["tokens"]["steps"][0]
    assert record["step"] == "generate" and record["model"] == "embedded"
    assert record["prompt_tokens"] == generated["generate_prompt_tokens"].sum() > 0
    assert record["completion_tokens"] == generated["generate_completion_tokens"].sum() == generated["completion_tokens"].sum()
    card = (out / "README.md").read_text()
    assert f"| generate | embedded | {record['prompt_tokens']} | {record['completion_tokens']} |" in card

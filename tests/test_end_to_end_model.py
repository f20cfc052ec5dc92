"""The README's main job with the real embedded model on CPU, through the installed CLI."""

from __future__ import annotations

import json
import re
from collections import Counter

import datasets
import polars as pl
import pytest

from helpers import PIPELINES, datagen_cli
from datagen.text.answers import equivalent, extract_answer, parse_reference

pytestmark = pytest.mark.model

STAGES = ["generate", "finished", "length", "vote", "verify", "dedup", "collapse", "judge"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "out"
    result = datagen_cli("run", PIPELINES / "quickstart.yaml", "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_quickstart_writes_a_dataset_of_real_model_text(quickstart):
    out, result = quickstart
    assert "wrote" in result.stdout
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows > 0
    for row in ds:
        assistant = row["messages"][-1]
        assert assistant["role"] == "assistant" and len(assistant["content"].split()) >= 5
        assert "SmolLM2-135M" in row["model"] and row["backend"] == "vllm"
        assert row["persona"] and row["slots"] and row["completion_tokens"] > 0 and row["sample_seed"] is not None
        if row["judge_error"] is None:
            assert 2 <= row["judge_score"] <= 5, "judge min_score 2 applied, on the rubric's 1-5 scale"
        else:  # kept by on_error: keep, with no score (never a made-up one)
            assert row["judge_score"] is None


def test_every_stage_ran_and_the_card_counts_rows_and_reasons(quickstart):
    out, _ = quickstart
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    order = sorted(manifest["stages"], key=lambda label: manifest["stages"][label]["index"])
    assert manifest["complete"] and order == STAGES
    card = (out / "README.md").read_text()
    for stage in STAGES:
        assert f"| {stage} |" in card
    assert "| generate | 24 | 96 |" in card
    judged = pl.read_parquet(out / "run" / "stages" / "07_judge" / "*.parquet").filter(pl.col("judge_keep").is_not_null())
    kept_with_error = judged.filter(pl.col("keep") & pl.col("judge_error").is_not_null()).height
    kept = judged.filter(pl.col("keep")).height
    error_note = f" ({kept_with_error} with an error, not passed)" if kept_with_error else ""
    assert f"| judge | {judged.height} | {kept}{error_note} |" in card
    candidates = pl.read_parquet(out / "run" / "stages" / "07_judge" / "*.parquet")
    assert candidates.height == 96
    dropped = candidates.filter(~pl.col("keep")).group_by("dropped_by").len()
    assert dropped.height > 0, "the real model's output is filtered by some stage"
    for stage, count in dropped.rows():
        reasons = candidates.filter(pl.col("dropped_by") == stage)[f"{stage}_reason"]
        assert reasons.null_count() == 0, f"every drop by {stage} has a reason"
        row = re.search(rf"^\| {stage} \| \d+ \| \d+(?: \(\d+ with an error, not passed\))? \| (\d+) \| (.*) \|$", card, re.M)
        assert row is not None and int(row[1]) == count, (stage, count)
        for reason, n in Counter(reasons).items():
            assert f"{reason}: {n}" in row[2], (stage, reason, n)


def test_kept_math_rows_have_verified_answers(quickstart):
    out, _ = quickstart
    candidates = pl.read_parquet(out / "run" / "stages" / "07_judge" / "*.parquet")
    math = candidates.filter((pl.col("template_id") == "math_word_problems") & pl.col("verify_keep").is_not_null())
    assert math.height > 0
    for row in math.iter_rows(named=True):
        answer = extract_answer(row["completion"])
        correct = answer is not None and equivalent(parse_reference(row["reference"]), answer)
        assert row["verify_keep"] == correct, row["completion"][-200:]

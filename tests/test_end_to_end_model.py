"""The quickstart recipe with the real embedded model on CPU, through the installed CLI."""

from __future__ import annotations

import datasets
import polars as pl
import pytest

from conftest import PIPELINES, datagen_cli

pytestmark = pytest.mark.model

SMALL = [
    "--set", "templates.0.count=2",
    "--set", "templates.1.count=2",
    "--set", "templates.2.count=2",
    "--set", "backend.sampling.max_tokens=96",
    "--set", "stages.0.drop_truncated=false",
    "--set", "execution.shard_size=4",
    "--no-progress",
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    results = []
    for name in ("a", "b"):
        result = datagen_cli("run", PIPELINES / "quickstart.yaml", "--out", root / name, *SMALL)
        assert result.returncode == 0, result.stderr[-3000:]
        results.append((root / name, result))
    return results


def test_quickstart_writes_a_dataset_of_real_model_text(two_runs):
    out, result = two_runs[0]
    assert "wrote" in result.stdout
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows >= 6
    assert set(ds["template_id"]) == {"math_word_problems", "python_functions", "assistant_requests"}
    for row in ds:
        assistant = row["messages"][-1]
        assert assistant["role"] == "assistant" and len(assistant["content"].split()) >= 5
        assert "SmolLM2-135M" in row["model"] and row["backend"] == "vllm"
        assert row["persona"] and row["slots"] and row["completion_tokens"] > 0
    math_rows = [r for r in ds if r["template_id"] == "math_word_problems"]
    assert all(r["reference"] for r in math_rows)
    card = (out / "README.md").read_text()
    assert "| generate | 6 | 12 |" in card


def test_same_seed_same_completions_with_vllm(two_runs):
    (a, _), (b, _) = two_runs
    cols = ["candidate_id", "completion", "sample_seed"]
    first = pl.read_parquet(a / "run" / "stages" / "00_generate" / "*.parquet").select(cols)
    second = pl.read_parquet(b / "run" / "stages" / "00_generate" / "*.parquet").select(cols)
    assert first.height == 12
    assert first.equals(second)
    assert first["completion"].n_unique() > 6, "n samples differ from each other"

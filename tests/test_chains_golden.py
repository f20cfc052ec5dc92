"""Today's recipes keep their rows: the row ids and verdicts of every shipped recipe's shape, run on
the scripted backend with small counts, compared with digests recorded before the step contract
and generation chains (issue 13) were built."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from datagen.run.executor import run_pipeline
from datagen.recipe import load_recipe
from helpers import PIPELINES

# Canned completions: boxed answers (some right, most wrong for the math template), a function,
# a short text and an open answer, so that finished/length/verify/vote/dedup/collapse all decide.
RESPONSES = [
    "Each of the steps adds up: 3 x 4 = 12, so the answer is \\boxed{12}.",
    "Working it through carefully gives \\boxed{7} as the final answer here.",
    "def add(a, b):\n    return a + b\n",
    "A short answer.",
    "I think the result is 42 but I am not fully sure about the whole thing at all.",
]
SCRIPTED = ["backend.kind=scripted", "backend.sampling.max_tokens=40", f"backend.responses={json.dumps(RESPONSES)}"]

# recipe -> (extra --set values, digest of (candidate_id, keep, dropped_by, every *_reason) of the
# last stage's rows sorted by id, rows). Recorded on commit da994ab, before the step contract.
EXPECTED = {
    "quickstart": (["templates.0.count=3", "templates.1.count=2", "templates.2.count=3", "stages.6.backend.kind=scripted"], "a1480e99da4c4f65", 32),
    "dpo_pairs": (["templates.0.count=3", "templates.1.count=2", "stages.3.backend.kind=scripted"], "1aad810313d90ea1", 20),
    "rejection_sft": (["templates.0.count=3", "templates.1.count=2", "templates.2.count=2"], "4fea74e5134a1ea6", 28),
    "constitutional": (["templates.0.count=3", "templates.1.count=2"], "2f15c72f282c358c", 5),
}


def rows_digest(out: Path) -> tuple[str, int]:
    """(digest, rows) of the last stage's candidates: ids, verdicts and every stage's reason."""
    last = sorted((out / "run" / "stages").iterdir())[-1]
    frame = pl.read_parquet(sorted(last.glob("*.parquet")))
    reasons = sorted(c for c in frame.columns if c.endswith("_reason"))
    rows = frame.select("candidate_id", "keep", "dropped_by", *reasons).sort("candidate_id").rows()
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16], frame.height


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_recipe_shapes_keep_their_rows(name: str, tmp_path: Path):
    extra, digest, height = EXPECTED[name]
    loaded = load_recipe(PIPELINES / f"{name}.yaml", SCRIPTED + extra)
    run_pipeline(loaded, tmp_path / "out", progress=False)
    assert rows_digest(tmp_path / "out") == (digest, height)

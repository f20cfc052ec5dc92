"""`datagen inspect`: output pairs side by side with their scores, rows with errors that are not
drops (never shown as kept), one row's full record by id, and the max_tokens a cut-off row hit."""

from __future__ import annotations

import json

import polars as pl
import pytest

from datagen.cli import main
from datagen.run.executor import run_pipeline
from datagen.recipe import load_recipe

RESPONSES = [
    "Rivers carry water from the hills to the sea and shape the valleys they run through.",
    "Stars are huge balls of hot gas.",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",  # cut by max_tokens
]
VERDICTS = [
    json.dumps({"rationale": "clear and correct explanation", "helpfulness": 5, "correctness": 5, "instruction_following": 4, "clarity": 5}),
    json.dumps({"rationale": "too thin to help the user", "helpfulness": 2, "correctness": 3, "instruction_following": 2, "clarity": 3}),
    "I give it a four.",  # not JSON: a judge_error, kept (on_error: keep)
]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    from helpers import TINY_TEMPLATE, write_yaml

    root = tmp_path_factory.mktemp("inspect")
    write_yaml(root / "templates" / "tiny.yaml", TINY_TEMPLATE)
    path = write_yaml(root / "pipelines" / "recipe.yaml", {
        "name": "inspect-test", "seed": 7, "templates": [{"name": "tiny", "count": 4}],
        "backend": {"kind": "scripted", "responses": RESPONSES, "sampling": {"n": 3, "max_tokens": 12}},
        "stages": [{"stage": "finished", "drop_truncated": False},
                   {"stage": "judge", "rubric": "helpfulness", "backend": {"kind": "scripted", "responses": VERDICTS}}],
        "output": {"format": "dpo", "pairs": {"strategy": "score_margin", "stage": "judge", "min_margin": 0.5}},
    })
    out = root / "out"
    run_pipeline(load_recipe(path), out, progress=False)
    return out


def inspect(capsys, *args) -> str:
    assert main(["inspect", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_pairs_side_by_side_with_scores(dpo_run, capsys):
    pairs = pl.read_parquet(dpo_run / "data" / "*.parquet")
    assert pairs.height
    text = inspect(capsys, dpo_run, "--pairs", "--rows", "2")
    assert f"pairs: {pairs.height}, showing {min(2, pairs.height)}" in text
    first = pairs.row(0, named=True)
    header = next(line for line in text.splitlines() if "chosen" in line and "rejected" in line)
    assert header.index("chosen") < header.index("rejected"), "chosen beside rejected"
    assert f"| {first['chosen_id']}" in text and f"| {first['rejected_id']}" in text
    assert str(first["chosen_score"]) in text and str(first["rejected_score"]) in text


def test_errors_that_are_not_drops_are_listed_and_never_shown_as_kept(dpo_run, capsys):
    rows = pl.read_parquet(dpo_run / "run" / "stages" / "02_judge" / "*.parquet")
    kept_errors = rows.filter(pl.col("judge_error").is_not_null() & pl.col("keep"))
    assert kept_errors.height
    text = inspect(capsys, dpo_run, "--errors", "--rows", "100")
    assert f"where errors that are not drops: {kept_errors.height} rows" in text
    headings = [line for line in text.splitlines() if line.startswith("--- ")]
    assert len(headings) == kept_errors.height
    assert all("[not dropped, but judge recorded an error]" in line and "[kept]" not in line for line in headings)
    shown = [line.strip() for line in text.splitlines() if line.strip().startswith("judge_error: ")]
    assert len(shown) == kept_errors.height, "each row shows its error"
    assert all(any(line.startswith(f"judge_error: {e.splitlines()[0][:60]}") for line in shown) for e in kept_errors["judge_error"])
    everything = inspect(capsys, dpo_run, "--rows", "100")
    for candidate in kept_errors["candidate_id"]:
        line = next(line for line in everything.splitlines() if f"candidate {candidate} " in line or line.endswith(f"candidate {candidate}"))
        assert "[kept]" not in line


def test_a_rows_full_record_by_id_and_the_max_tokens_it_hit(dpo_run, capsys):
    rows = pl.read_parquet(dpo_run / "run" / "stages" / "02_judge" / "*.parquet")
    cut = rows.filter(pl.col("finish_reason") == "length").row(0, named=True)
    text = inspect(capsys, dpo_run, "--id", cut["candidate_id"])
    assert "(cut off at max_tokens=12)" in text
    for column in rows.columns:
        assert f"  {column}: " in text, column
    assert "  finished_max_tokens: 12" in text
    assert main(["inspect", str(dpo_run), "--id", "nope"]) == 2
    assert "no row with id 'nope'" in capsys.readouterr().err


def test_the_run_summary_counts_rows_kept_with_an_error(tmp_path, capsys):
    from helpers import TINY_TEMPLATE, write_yaml

    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)
    path = write_yaml(tmp_path / "pipelines" / "recipe.yaml", {
        "name": "errors", "seed": 1, "templates": [{"name": "tiny", "count": 2}],
        "backend": {"kind": "scripted", "responses": RESPONSES[:2], "sampling": {"n": 2, "max_tokens": 40}},
        "stages": [{"stage": "judge", "rubric": "helpfulness", "backend": {"kind": "scripted", "responses": [VERDICTS[0], VERDICTS[2]]}}],
    })
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--progress", "none"]) == 0
    judged = pl.read_parquet(tmp_path / "out" / "run" / "stages" / "01_judge" / "*.parquet")
    errors = judged["judge_error"].is_not_null().sum()
    assert 0 < errors < judged.height
    assert f"judge:      4 in ->      4 kept, {errors} of them with an error" in capsys.readouterr().out
    text = inspect(capsys, tmp_path / "out")
    header = next(line for line in text.splitlines() if line.startswith("| stage "))
    judge_line = next(line for line in text.splitlines() if line.startswith("| judge "))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in judge_line.split("|")]))
    assert (cells["kept"], cells["kept with an error"]) == ("4", str(errors)), judge_line
    warnings = text.split("trust warnings:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert any(line.startswith(f"  judge: errors (no score) {errors} of 4 (") for line in warnings), warnings

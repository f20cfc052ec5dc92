"""The shipped grounded_qa recipe end to end on the embedded model (CPU, small counts): questions
from documentation chunks in the manner of real tickets, restyled, answered from their chunk,
judged for grounding, weighted, with the real tickets in the mix; TRL's SFTTrainer takes two steps
on the output. The data contract: the tickets file may be swapped for a CSV or Parquet one."""

from __future__ import annotations

import json
import shutil

import datasets
import polars as pl
import pytest

from helpers import PIPELINES, assert_two_steps, datagen_in_process, load_embedded_model, trainer_args

EXAMPLES = PIPELINES / "examples"
TICKETS = {t["id"]: t for t in map(json.loads, (EXAMPLES / "tickets.jsonl").read_text().splitlines())}
WEIGHT = (3, 2, 1, 30)  # the recipe's formula: (3 supported + 2 relevant + fluent) / 30


def expected_weight(row: dict) -> float | None:
    scores = [row["grounding_supported"], row["grounding_relevant"], row["grounding_fluent"]]
    if None in scores:
        return None
    return sum(w * s for w, s in zip(WEIGHT, scores)) / WEIGHT[3]


@pytest.mark.model
@pytest.mark.slow
def test_grounded_qa_on_the_embedded_model(tmp_path, model_cli):
    out = tmp_path / "out"
    # 4 prompts: with the recipe's seed 3 questions survive, 8 answers reach the judge, 3 synthetic
    # rows and 1 real row are written (checked once; about 4 minutes on 2 cores)
    result = model_cli("run", PIPELINES / "grounded_qa.yaml", "--out", out, "--progress", "none", "--set", "templates.0.count=4", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    ds = datasets.load_dataset(str(out), split="train")
    rows = ds.to_list()
    synthetic = [r for r in rows if r["origin"] == "synthetic"]
    real = [r for r in rows if r["origin"] == "real"]
    assert len(synthetic) + len(real) == len(rows) > 0

    docs = {p.name: p.read_text() for p in (EXAMPLES / "api_docs").glob("*.md")}
    for row in synthetic:
        tickets = [s.removeprefix("tickets:") for s in row["source_ids"] if s.startswith("tickets:")]
        [doc] = [s.removeprefix("docs:") for s in row["source_ids"] if s.startswith("docs:")]
        assert len(tickets) == 2 and set(tickets) <= set(TICKETS), "every synthetic row names the tickets it came from"
        assert row["reference"] in docs[doc.split("#")[0]] and row["reference"] in row["messages"][1]["content"]
        assert row["tone"] in {"polite", "frustrated", "terse"} and row["temperature"] in {0.5, 0.8, 1.0}
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"].strip()
        slots = json.loads(row["slots"])
        assert {"question_type", "persona", "difficulty"} <= set(slots)
        expected = expected_weight(row)
        assert (row["weight"] is None) == (expected is None) and (expected is None or row["weight"] == pytest.approx(expected))
        if expected is not None:
            assert row["grounding_score"] >= 2.0, "the grounding judge's min_score"

    # real tickets with their answers, a quarter of the mix (round(0.25 * S / 0.75))
    assert len(real) == round(len(synthetic) / 3)
    weights = [r["weight"] for r in synthetic if r["weight"] is not None]
    for row in real:
        [source] = row["source_ids"]
        ticket = TICKETS[source.removeprefix("tickets:")]
        assert ticket["answer"] and row["messages"][-1] == {"role": "assistant", "content": ticket["answer"]}
        assert row["weight"] == (max(weights) if weights else None)
    card = (out / "README.md").read_text()
    assert f"- Rows by origin: synthetic {len(synthetic)}, real {len(real)}" in card and "| weight |" in card

    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_embedded_model()
    train = ds.select_columns(["messages"])
    trainer = SFTTrainer(model=model, args=trainer_args(SFTConfig, tmp_path / "sft"), train_dataset=train, processing_class=tokenizer)
    assert_two_steps(trainer)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_grounded_qa_takes_a_tickets_file_in_another_format(tmp_path, suffix):
    """`--set data.tickets.path=F` with any file holding id, subject, body (answer optional)."""
    frame = pl.DataFrame(list(TICKETS.values())[:8]).drop("answer")
    path = tmp_path / f"tickets.{suffix}"
    frame.write_csv(path) if suffix == "csv" else frame.write_parquet(path)
    result = datagen_in_process("validate", PIPELINES / "grounded_qa.yaml", "--set", f"data.tickets.path={path}")
    assert result.returncode == 0, result.stderr  # no answer column: the mix then has no real row
    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES / "api_docs", docs)
    result = datagen_in_process("validate", PIPELINES / "grounded_qa.yaml", "--set", f"data.tickets.path={path}", "--set", f"data.docs.path={docs}")
    assert result.returncode == 0, result.stderr


def test_grounded_qa_bad_tickets_file_is_one_line(tmp_path):
    path = tmp_path / "tickets.csv"
    path.write_text("id,subject,body\nT-1,Webhooks,Why retries?\nT-2,Labels,Void,extra\n")
    result = datagen_in_process("validate", PIPELINES / "grounded_qa.yaml", "--set", f"data.tickets.path={path}")
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert str(path) in line and "row 2" in line

"""The shipped ultrafeedback recipe on the real embedded model, through the CLI, with the user's own
prompts file swapped in (`--set data.prompts.path=`, a CSV here; JSONL and Parquet give the same
prompts: tests/test_data_sources.py): every answer is judged, the DPO pairs load with `datasets`,
every pair names the prompt row it came from, and TRL's DPOTrainer takes two steps on them.

Pairs: at this size the 135M judge gives every answer of a prompt the same score (measured on these
12 prompts: no prompt with any spread, so score_margin pairs nothing), so the test appends a math
verify step against each prompt's `reference` column and pairs a right answer against a wrong one
(strategy verified); the judge still scores every answer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import polars as pl
import pytest

from helpers import PIPELINES, train_dpo

pytestmark = [pytest.mark.model, pytest.mark.slow]

# Short word problems with a reference answer (the judge sees it: show_reference), which a 135M
# model answers within the small token budget and its judge can tell apart.
PROMPTS = [
    ("apples", "Sara has 12 apples and gives away 5. How many apples does she have left? Explain briefly, then give the answer.", "7"),
    ("bus", "A bus carries 40 people and 3 buses are full. How many people are on the buses? Explain briefly, then give the answer.", "120"),
    ("pizza", "A pizza is cut into 8 slices and Tom eats 3. How many slices are left? Explain briefly, then give the answer.", "5"),
    ("pens", "Pens cost $2 each. How much do 7 pens cost in dollars? Explain briefly, then give the answer.", "14"),
    ("days", "How many hours are there in 2 days? Explain briefly, then give the answer.", "48"),
    ("books", "A shelf holds 9 books and there are 4 shelves. How many books fit? Explain briefly, then give the answer.", "36"),
    ("eggs", "A carton holds 12 eggs. How many eggs are in 5 cartons? Explain briefly, then give the answer.", "60"),
    ("walk", "Ana walks 3 km every day. How many km does she walk in a week? Explain briefly, then give the answer.", "21"),
    ("stamps", "Leo had 25 stamps and bought 17 more. How many stamps does he have now? Explain briefly, then give the answer.", "42"),
    ("cake", "A cake needs 3 eggs. How many eggs do 6 cakes need? Explain briefly, then give the answer.", "18"),
    ("train", "A train leaves at 2 pm and the trip takes 3 hours. At what hour in the afternoon does it arrive? Explain briefly, then give the answer.", "5"),
    ("coins", "Mia has 4 coins of 25 cents. How many cents does she have? Explain briefly, then give the answer.", "100"),
]


@pytest.fixture(scope="module")
def ultrafeedback(tmp_path_factory, model_cli) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("uf")
    prompts = root / "my_prompts.csv"
    with open(prompts, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "reference"])
        writer.writerows(PROMPTS)
    out = root / "out"
    result = model_cli(
        "run", PIPELINES / "ultrafeedback.yaml", "--out", out, "--no-progress",
        "--set", f"data.prompts.path={prompts}", "--set", "backend.sampling.max_tokens=160",
        "--set", 'stages.+={stage: verify, verifiers: {"*": {kind: math}}}', "--set", "output.pairs.strategy=verified",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, prompts


def test_ultrafeedback_pairs_name_their_prompt_row_and_train(ultrafeedback, tmp_path):
    from datagen.text.answers import equivalent, extract_answer, parse_reference

    out, _ = ultrafeedback
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows >= 1, "the recipe must yield pairs with its fixed seed"
    texts = {pid: text for pid, text, _ in PROMPTS}
    references = {pid: reference for pid, _, reference in PROMPTS}
    for row in ds:
        assert row["template_id"] == "prompts"
        [source_id] = row["source_ids"]
        name, _, pid = source_id.partition(":")
        assert name == "prompts" and pid in texts
        assert row["prompt"][-1] == {"role": "user", "content": texts[pid]}
        assert row["prompt"][0]["role"] == "system" and row["reference"] == references[pid]
        assert row["strategy"] == "verified"
        expected = parse_reference(references[pid])
        assert equivalent(expected, extract_answer(row["chosen"][0]["content"]))
        assert not equivalent(expected, extract_answer(row["rejected"][0]["content"]))
    # every candidate row, kept or not, names its prompt row too
    candidates = pl.read_parquet(out / "run" / "stages" / "05_verify" / "*.parquet")
    assert candidates.height == 4 * len(PROMPTS)
    assert all(len(ids) == 1 and ids[0].startswith("prompts:") for ids in candidates["source_ids"].to_list())
    judged = candidates.filter(pl.col("judge_keep").is_not_null())
    assert judged.height and judged["judge_score"].is_not_null().any(), "every answer that reached the judge was judged"
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["prompts"] == len(PROMPTS)
    train_dpo(ds, tmp_path / "dpo")

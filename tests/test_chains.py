"""Generation chains on the scripted backend: the model writes a question as JSON (structured
output), a parse step makes columns of it, dedup runs on the question column, an LLM step answers
each question n times, vote's majority becomes the reference of verify; provenance is a tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from datagen.text.answers import extract_answer
from datagen.run.executor import run_pipeline
from datagen.recipe import load_recipe
from helpers import TINY_TEMPLATE, datagen_in_process, write_yaml

QUESTIONS = [
    {"question": "A farmer has 3 pens with 4 sheep each. How many sheep?", "answer": "12"},
    {"question": "A box holds 6 rows of 5 eggs. How many eggs?", "answer": "30"},
    {"question": "A box holds 6 rows of 5 eggs. How many eggs?", "answer": "30"},  # a duplicate question for dedup
    {"question": "Tom reads 7 pages a day for 3 days. How many pages?", "answer": "21"},
    {"question": "A class of 24 splits into teams of 4. How many teams?", "answer": "6"},
    {"question": "Mia buys 5 pens at 2 dollars each. What does she pay?", "answer": "10"},
]
# Solutions: most agree (their boxed answer is the same), some do not, one has no answer.
SOLUTIONS = [
    "Multiply to get the total: \\boxed{12}.",
    "Counting them all gives \\boxed{12}.",
    "Counting twice gives \\boxed{13}.",
    "It is hard to say.",
]
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}, "required": ["question", "answer"]}
N_SOLVE = 3


def chain_recipe(root: Path, *, prompts: int = 12, shard_size: int = 3, **overrides) -> Path:
    write_yaml(root / "templates" / "tiny.yaml", TINY_TEMPLATE)
    recipe = {
        "name": "chain",
        "seed": 11,
        "templates": [{"name": "tiny", "count": prompts}],
        "backend": {
            "kind": "scripted",
            "responses": [json.dumps(q) for q in QUESTIONS] + ["not json at all"],
            "sampling": {"n": 1, "max_tokens": 100, "json_schema": SCHEMA},
        },
        "stages": [
            {"stage": "parse", "parser": {"kind": "json", "schema": SCHEMA}},
            {"stage": "dedup", "column": "question", "threshold": 0.9},
            {
                "stage": "llm",
                "name": "solve",
                "system": "You are {{ persona }}.",
                "user": "Solve step by step; put the final answer in \\boxed{}.\n\n{{ question }}",
                "sampling": {"n": N_SOLVE, "max_tokens": 60, "temperature": 0.7},
                "backend": {"kind": "scripted", "responses": SOLUTIONS},
            },
            {"stage": "vote", "ks": [1]},
            {"stage": "verify", "reference_column": "vote_majority", "verifiers": {"*": {"kind": "math"}}},
        ],
        "execution": {"shard_size": shard_size},
    } | overrides
    return write_yaml(root / "pipelines" / "chain.yaml", recipe)


def stage_rows(out: Path, index: int) -> pl.DataFrame:
    folder = next(p for p in (out / "run" / "stages").iterdir() if p.name.startswith(f"{index:02d}_"))
    return pl.read_parquet(sorted(folder.glob("*.parquet")))


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    out = root / "out"
    result = run_pipeline(load_recipe(chain_recipe(root)), out, progress=False)
    return root, out, result


def test_a_final_row_traces_back_through_every_step_to_its_template_slots(chain_run):
    root, out, result = chain_run
    import datasets

    final = datasets.load_dataset(str(out), split="train").to_polars()
    assert final.height == result.rows_written > 0
    prompts = pl.read_parquet(out / "run" / "prompts.parquet")
    questions = stage_rows(out, 1)  # after parse: the question rows
    for row in final.iter_rows(named=True):
        # answer step -> its parent (the question row) -> the prompt (template and slots)
        prompt_id, question_id = row["lineage"]
        assert row["parent_id"] == question_id == row["group_id"]
        assert row["candidate_id"].startswith(f"{question_id}-solve-")
        parent = questions.filter(pl.col("candidate_id") == question_id).row(0, named=True)
        assert parent["prompt_id"] == prompt_id and parent["lineage"] == [prompt_id]
        assert json.loads(parent["completion"])["question"] == parent["question"] == row["question"]
        assert row["generate_completion"] == parent["completion"]
        prompt = prompts.filter(pl.col("prompt_id") == prompt_id).row(0, named=True)
        assert prompt["template_id"] == row["template_id"] == "tiny"
        slots = json.loads(prompt["slots"])
        assert slots["persona"] in TINY_TEMPLATE["slots"]["persona"] and slots == json.loads(row["slots"])
        # the child's messages are the request the answer step sent, then its answer
        sent = row["messages"]
        assert sent[0] == {"role": "system", "content": f"You are {slots['persona']}."}
        assert sent[1]["role"] == "user" and row["question"] in sent[1]["content"]
        assert sent[-1]["role"] == "assistant" and "\\boxed{" in sent[-1]["content"]


def test_each_question_is_answered_n_times_and_only_majority_answers_survive(chain_run):
    _, out, _ = chain_run
    questions = stage_rows(out, 2).filter(pl.col("keep"))  # alive after dedup
    answers = stage_rows(out, 5)
    children = answers.filter(pl.col("step") == "solve")
    assert children.height == N_SOLVE * questions.height
    assert sorted(set(children["parent_id"])) == sorted(questions["candidate_id"])
    assert children.group_by("parent_id").len()["len"].to_list() == [N_SOLVE] * questions.height
    for group in children.partition_by("group_id"):
        boxed = [extract_answer(t) for t in group["completion"]]
        counts: dict[str, int] = {}
        for answer in boxed:
            if answer is not None:
                counts[answer.text] = counts.get(answer.text, 0) + 1
        for row, answer in zip(group.iter_rows(named=True), boxed):
            if not counts:
                assert not row["keep"]
                continue
            top = max(counts.values())
            agrees = answer is not None and counts[answer.text] == top and answer.text == row["vote_majority"]
            assert row["keep"] == (agrees and row["verify_keep"]), row
            if answer is not None and answer.text != row["vote_majority"]:
                assert row["dropped_by"] == "verify" and row["verify_reason"] == "wrong_answer"


def test_dedup_runs_on_the_generated_question_not_the_json(chain_run):
    _, out, _ = chain_run
    rows = stage_rows(out, 2).filter(pl.col("parse_keep"))
    kept = rows.filter(pl.col("keep"))
    assert kept["question"].n_unique() == kept.height, "one row per distinct question"
    assert set(kept["question"]) == set(rows["question"])
    assert rows.filter(pl.col("dedup_reason").is_not_null())["dedup_reason"].is_in(["exact_duplicate", "near_duplicate"]).all()
    assert rows["completion"].str.starts_with("{").all(), "the text column is left as it was"


def test_unparsable_text_is_a_parse_error_verdict(chain_run):
    _, out, _ = chain_run
    parsed = stage_rows(out, 1)
    bad = parsed.filter(pl.col("completion") == "not json at all")
    assert bad.height > 0, "the scripted model gave some invalid JSON"
    assert (bad["parse_reason"] == "parse_error").all() and (bad["dropped_by"] == "parse").all()
    assert bad["parse_error"].is_not_null().all()


def test_child_rows_do_not_depend_on_the_batch(tmp_path):
    """Seeds come from the recipe seed, the step's label and the parent id: other shards, same rows."""
    a = run_pipeline(load_recipe(chain_recipe(tmp_path / "a", shard_size=1)), tmp_path / "a" / "out", progress=False)
    b = run_pipeline(load_recipe(chain_recipe(tmp_path / "b", shard_size=5)), tmp_path / "b" / "out", progress=False)
    columns = ["candidate_id", "completion", "sample_seed", "keep"]
    rows_a = stage_rows(a.out, 5).select(columns).sort("candidate_id")
    rows_b = stage_rows(b.out, 5).select(columns).sort("candidate_id")
    assert rows_a.equals(rows_b)


def test_majority_pairs_pair_agreeing_with_minority_answers_of_one_question(tmp_path):
    path = chain_recipe(tmp_path, prompts=16)
    loaded = load_recipe(path, ["output.format=dpo", "output.pairs.strategy=majority"])
    result = run_pipeline(loaded, tmp_path / "out", progress=False)
    pairs = pl.read_parquet(sorted((tmp_path / "out" / "data").glob("*.parquet")))
    assert pairs.height == result.rows_written > 0
    answers = stage_rows(tmp_path / "out", 5)
    by_id = {row["candidate_id"]: row for row in answers.iter_rows(named=True)}
    for pair in pairs.iter_rows(named=True):
        chosen, rejected = by_id[pair["chosen_id"]], by_id[pair["rejected_id"]]
        assert chosen["group_id"] == rejected["group_id"], "both sides answer the same question"
        assert chosen["keep"] and chosen["vote_in_majority"]
        assert not rejected["vote_in_majority"] and rejected["vote_answer"] is not None
        assert extract_answer(pair["chosen"][0]["content"]).text == chosen["vote_majority"]
        assert pair["prompt"] == chosen["messages"], "the prompt is the answer step's request"


def test_a_step_reading_a_column_no_earlier_step_writes_is_refused_by_validate(tmp_path):
    path = chain_recipe(tmp_path)
    data = json.loads(json.dumps(__import__("yaml").safe_load(path.read_text())))
    data["stages"].insert(0, data["stages"].pop(1))  # dedup on `question` before the parse step writes it
    write_yaml(path, data)
    result = datagen_in_process("validate", path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "stages.0" in lines[0] and "'question'" in lines[0] and "chain.yaml" in lines[0]
    # an LLM step's prompt reading an unknown column is refused the same way; slots are not columns but may be read
    data = __import__("yaml").safe_load(chain_recipe(tmp_path).read_text())
    data["stages"][2]["user"] = "{{ topic }} {{ difficulty }}: {{ no_such_column }}"
    write_yaml(path, data)
    result = datagen_in_process("validate", path)
    assert result.returncode == 2 and "stages.2" in result.stderr and "'no_such_column'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_vote_majority_as_a_reference_only_after_a_vote(tmp_path):
    path = chain_recipe(tmp_path)
    data = __import__("yaml").safe_load(path.read_text())
    del data["stages"][3]  # no vote: nothing writes vote_majority
    write_yaml(path, data)
    result = datagen_in_process("validate", path)
    assert result.returncode == 2 and "stages.3" in result.stderr and "'vote_majority'" in result.stderr


CHILD = r'''
import os, signal, sys
from pathlib import Path
from datagen.llm.scripted import ScriptedBackend

log, kill_at = Path(sys.argv[1]), int(sys.argv[2])
original = ScriptedBackend.generate
calls = {"solve": 0}

def generate(self, requests, sampling):
    step = "solve" if "Solve step by step" in requests[0].messages[-1]["content"] else "generate"
    with log.open("a") as f:
        f.write(f"{step} {len(requests)}\n")
    result = original(self, requests, sampling)
    if step == "solve":
        calls["solve"] += 1
        if calls["solve"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return result

ScriptedBackend.generate = generate
from datagen.cli import main
sys.exit(main(sys.argv[3:]))
'''


@pytest.mark.slow
def test_killed_during_the_second_llm_step_resumes_without_asking_the_first_again(tmp_path):
    path = chain_recipe(tmp_path, prompts=12, shard_size=2)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    def run(out: Path, log: Path, kill_at: int) -> tuple[subprocess.CompletedProcess, list[tuple[str, int]]]:
        done = subprocess.run([sys.executable, str(child), str(log), str(kill_at), "run", str(path), "--out", str(out), "--progress", "none"],
                              capture_output=True, text=True, timeout=600, env=env)
        calls = [(line.split()[0], int(line.split()[1])) for line in log.read_text().splitlines()] if log.exists() else []
        return done, calls

    baseline, baseline_calls = run(tmp_path / "baseline", tmp_path / "baseline.log", 0)
    assert baseline.returncode == 0, baseline.stderr[-2000:]
    solve_requests = sum(n for step, n in baseline_calls if step == "solve")
    out = tmp_path / "out"
    killed, killed_calls = run(out, tmp_path / "killed.log", 3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    solve_calls = [n for step, n in killed_calls if step == "solve"]
    assert len(solve_calls) == 3 and [step for step, _ in killed_calls].count("generate") == 6
    resumed, resumed_calls = run(out, tmp_path / "resumed.log", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert all(step == "solve" for step, _ in resumed_calls), "the first step (generation) is not asked again"
    # the two answer shards finished before the kill are reused; the one killed and those after are asked
    assert sum(n for _, n in resumed_calls) == solve_requests - sum(solve_calls[:2])
    for index in range(6):
        assert stage_rows(out, index).equals(stage_rows(tmp_path / "baseline", index)), f"stage {index} differs"
    final = pl.read_parquet(sorted((out / "data").glob("*.parquet")))
    assert final.equals(pl.read_parquet(sorted((tmp_path / "baseline" / "data").glob("*.parquet"))))


def test_converse_extends_each_row_to_k_user_assistant_pairs_each_turn_its_own_seed(tmp_path):
    path = chain_recipe(tmp_path, prompts=4, shard_size=4)
    data = __import__("yaml").safe_load(path.read_text())
    data["stages"] = [{"stage": "converse", "turns": 3, "user_system": "You are {{ persona }} asking about {{ topic }}."}]
    data["backend"] = {"kind": "scripted", "responses": ["reply one two three", "another reply four five", "a third reply six", "fourth seven eight"], "sampling": {"n": 1, "max_tokens": 20}}
    write_yaml(path, data)
    out = tmp_path / "out"
    run_pipeline(load_recipe(path), out, progress=False)
    rows = pl.read_parquet(sorted((out / "data").glob("*.parquet")))
    assert rows.height == 4
    for row in rows.iter_rows(named=True):
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
        assert row["converse_turns"] == 3
    assert rows["messages"].n_unique() > 1, "requests have their own seeds, so conversations differ"
    steps = stage_rows(out, 1)
    assert steps["converse_keep"].all()
    # a rerun with other shards gives the same conversations (seeds per row, turn and role)
    data["execution"] = {"shard_size": 1}
    write_yaml(path, data)
    run_pipeline(load_recipe(path), tmp_path / "again", progress=False)
    again = pl.read_parquet(sorted((tmp_path / "again" / "data").glob("*.parquet")))
    assert again.sort("candidate_id")["messages"].to_list() == rows.sort("candidate_id")["messages"].to_list()


def test_a_filter_told_to_read_a_column_that_is_not_text_is_refused(tmp_path):
    path = chain_recipe(tmp_path)
    result = datagen_in_process("validate", path, "--set", "stages.1.column=lineage")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "stages.1" in result.stderr and "'lineage'" in result.stderr and "as text" in result.stderr


def test_the_card_says_whose_sampling_it_shows(chain_run):
    root, out, result = chain_run
    card = (out / "README.md").read_text()
    line = next(line for line in card.splitlines() if line.startswith("- Seed: 11; "))
    assert line.startswith('- Seed: 11; sampling of the generate step: {"n": 1,') and line.endswith("record theirs in each row's `sampling`")
    rows = pl.read_parquet(out / "data" / "*.parquet")
    assert {json.loads(s)["n"] for s in rows["sampling"]} == {N_SOLVE}, "the rows record the solve step's sampling"

"""Token accounting (datagen/run/tokens.py): every model step records per row the tokens of the
requests it made; the manifest, card, report and `datagen inspect` show their sums per step and
model, and the cost with prices; `validate --estimate` bounds them before a run; `run --dry-run`
shows the first shard's requests. The scripted backend counts a token per word, so the right
figures follow from the texts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from helpers import TINY_TEMPLATE, datagen_cli, write_yaml
from datagen.llm.generate import request_seed
from datagen.recipe import load_recipe
from datagen.run.executor import expand_prompts, run_pipeline

VERDICT = json.dumps({"rationale": "clear and correct", "helpfulness": 4, "correctness": 4, "instruction_following": 4, "clarity": 4})
ANSWER = "A long answer, number {index}, with a few more words."
PRICES = {"gen-model": {"input": 1000.0, "output": 3000.0}, "judge-model": {"input": 500.0, "output": 2000.0}}
STEPS = {"generate": "00_generate", "rewrite": "01_rewrite", "judge": "02_judge"}


def words(text: str) -> int:
    return len(text.split())


def make_recipe(root: Path, prices: dict | None = None) -> Path:
    write_yaml(root / "templates" / "tiny.yaml", TINY_TEMPLATE)
    recipe = {
        "name": "tokens",
        "seed": 4,
        "template_dirs": ["templates"],
        "templates": [{"name": "tiny", "count": 6}],
        "backend": {"kind": "scripted", "model": "gen-model", "responses": [ANSWER], "sampling": {"n": 2, "max_tokens": 50}},
        "stages": [
            {"stage": "llm", "name": "rewrite", "user": "Rewrite this more simply: {{ completion }}", "sampling": {"n": 2, "max_tokens": 40}},
            {"stage": "judge", "rubric": "helpfulness", "backend": {"kind": "scripted", "model": "judge-model", "responses": [VERDICT]}},
        ],
        "execution": {"shard_size": 4},
        "output": {"prices": prices} if prices else {},
    }
    return write_yaml(root / "recipe.yaml", recipe)


@pytest.fixture(scope="module")
def priced_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    run_pipeline(load_recipe(make_recipe(root, PRICES)), root / "out", progress="none")
    return root / "out"


def shards(out: Path, step: str) -> pl.DataFrame:
    return pl.read_parquet(out / "run" / "stages" / STEPS[step] / "*.parquet")


def row_sums(out: Path, step: str) -> tuple[int, int]:
    rows = shards(out, step)
    return int(rows[f"{step}_prompt_tokens"].sum()), int(rows[f"{step}_completion_tokens"].sum())


def card_table(out: Path) -> dict[str, tuple[str, int, int]]:
    card = (out / "README.md").read_text()
    section = card.split("## Tokens and cost", 1)[1]
    found = {}
    for step, model, prompt, completion in re.findall(r"^\| (\w+) \| ?([\w-]*) ?\| (\d+) \| (\d+) \|", section, re.M):
        found[step] = (model, int(prompt), int(completion))
    return found


def test_rows_record_what_the_backend_counted(priced_run):
    prompts = pl.read_parquet(priced_run / "run" / "prompts.parquet")
    generated = shards(priced_run, "generate")
    # one request per prompt: its prompt counted once, whatever n; every sample's completion
    assert row_sums(priced_run, "generate")[0] == sum(words(m["content"]) for ms in prompts["messages"] for m in ms)
    assert row_sums(priced_run, "generate")[1] == sum(words(t) for t in generated["completion"])
    rewrite = shards(priced_run, "rewrite")
    children = rewrite.filter(pl.col("step") == "rewrite")
    assert children.height == 2 * generated.height
    requests = children.filter(pl.col("sample_index") == 0)  # one request per parent, n = 2 children
    assert row_sums(priced_run, "rewrite")[0] == sum(words(ms[-1]["content"]) for ms in requests["messages"])
    assert row_sums(priced_run, "rewrite")[1] == sum(words(t) for t in children["completion"])
    judged = shards(priced_run, "judge").filter(pl.col("judge_keep").is_not_null())
    assert judged.height == children.height
    assert (judged["judge_completion_tokens"] == words(VERDICT)).all() and (judged["judge_prompt_tokens"] > 0).all()


def test_card_manifest_and_inspect_show_the_sums_of_the_rows(priced_run):
    table = card_table(priced_run)
    models = {"generate": "gen-model", "rewrite": "gen-model", "judge": "judge-model"}
    for step in STEPS:
        assert table[step] == (models[step], *row_sums(priced_run, step))
    totals = [sum(row_sums(priced_run, s)[k] for s in STEPS) for k in (0, 1)]
    assert table["total"][1:] == tuple(totals)
    record = json.loads((priced_run / "run" / "manifest.json").read_text())["tokens"]
    assert [s["step"] for s in record["steps"]] == list(STEPS)
    assert record["models"]["judge-model"]["prompt_tokens"] == row_sums(priced_run, "judge")[0]
    assert [record["prompt_tokens"], record["completion_tokens"]] == totals
    shown = datagen_cli("inspect", priced_run)
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"\| judge\s+\| judge-model\s+\|\s+{row_sums(priced_run, 'judge')[0]} \|\s+{row_sums(priced_run, 'judge')[1]} \|", shown.stdout)
    assert "tokens and cost".lower() in (priced_run / "run" / "report.html").read_text().lower()


def expected_cost(out: Path, prices: dict) -> float:
    models = {"generate": "gen-model", "rewrite": "gen-model", "judge": "judge-model"}
    total = 0.0
    for step in STEPS:
        prompt, completion = row_sums(out, step)
        price = prices[models[step]]
        total += (prompt * price["input"] + completion * price["output"]) / 1e6
    return total


def test_the_cost_line_prices_each_models_tokens(priced_run):
    card = (priced_run / "README.md").read_text()
    line = next(line for line in card.splitlines() if line.startswith("Cost: $"))
    assert float(line.split("$")[1].split()[0]) == pytest.approx(expected_cost(priced_run, PRICES), abs=1e-4)
    assert "no price" not in line


@pytest.mark.slow
def test_without_prices_no_cost_and_prices_from_a_file(tmp_path):
    recipe = make_recipe(tmp_path)
    out = tmp_path / "out"
    result = datagen_cli("run", recipe, "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "tokens: generate (gen-model)" in result.stdout and "Cost:" not in result.stdout
    assert "No prices given" in (out / "README.md").read_text()
    prices = write_yaml(tmp_path / "prices.yaml", {"gen-model": {"input": 1000.0, "output": 3000.0}})
    result = datagen_cli("run", recipe, "--out", out, "--no-progress", "--prices", prices)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("Cost: $"))
    assert "no price for judge-model" in line
    only_generator = expected_cost(out, PRICES | {"judge-model": {"input": 0.0, "output": 0.0}})
    assert float(line.split("$")[1].split()[0]) == pytest.approx(only_generator, abs=1e-4)
    bad = write_yaml(tmp_path / "bad.yaml", {"gen-model": {"input": -1, "output": 2}})
    result = datagen_cli("run", recipe, "--out", out, "--prices", bad)
    assert result.returncode == 2 and "bad.yaml" in result.stderr and "gen-model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_estimate_bounds_what_a_run_spends(tmp_path, priced_run):
    recipe = make_recipe(tmp_path, PRICES)
    result = datagen_cli("validate", recipe, "--estimate")
    assert result.returncode == 0, result.stderr
    lines = {line.split("(")[0].strip(): line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "6 requests -> 12 rows, completion tokens <= 600" in lines["generate"]  # 6 prompts x n 2 x 50
    assert "12 requests -> 24 rows, completion tokens <= 960" in lines["rewrite"]  # 12 rows x n 2 x 40
    assert "24 requests -> 24 rows" in lines["judge"]
    bound = int(re.search(r"prompt tokens <= ([\d,]+)", lines["generate"]).group(1).replace(",", ""))
    assert bound >= row_sums(priced_run, "generate")[0]
    for step in STEPS:
        completion_bound = int(re.search(r"completion tokens <= ([\d,]+)", lines[step]).group(1).replace(",", ""))
        assert completion_bound >= row_sums(priced_run, step)[1]
    assert re.search(r"^cost <= \$[\d.]+", result.stdout, re.M)


@pytest.mark.slow
def test_dry_run_prints_the_first_shard_and_writes_nothing(tmp_path):
    recipe = make_recipe(tmp_path)
    out = tmp_path / "out"
    result = datagen_cli("run", recipe, "--out", out, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert not out.exists()
    loaded = load_recipe(recipe)
    first = expand_prompts(loaded).head(4)  # the prompts a run expands, shards of 4
    shown = re.findall(r"^=== request (\S+) .*seed=(\d+)$", result.stdout, re.M)
    assert shown == [(pid, str(request_seed(loaded.recipe.sampling_seed, pid))) for pid in first["prompt_id"]]
    assert first["messages"][0][-1]["content"] in result.stdout
    assert "first shard: 4 of 6 prompts" in result.stdout


def test_a_pairwise_judge_records_every_request_once(tmp_path):
    """Each comparison is asked in both orders; each request's tokens go to the row shown first,
    so the rows' columns sum to every request the judge sent."""
    from helpers import RIGHT, WRONG, WRONG_TOO, candidate_frame, candidate_row
    from test_judge import prefers_the_right_answer, run_pairwise

    batch = candidate_frame([candidate_row("p1", i, text) for i, text in enumerate([RIGHT, WRONG, WRONG_TOO])]
                            + [candidate_row("p2", 0, RIGHT), candidate_row("p2", 1, WRONG)])
    out, backend, _ = run_pairwise(batch, prefers_the_right_answer, pairs="all")
    sent = [request for call in backend.calls for request in call.requests]
    assert len(sent) == 2 * (3 + 1)  # 3 pairs of p1 and 1 of p2, both orders
    assert int(out["judge_prompt_tokens"].sum()) == sum(words(m["content"]) for r in sent for m in r.messages)
    answers = [backend._text(r, 0) for r in sent]
    assert int(out["judge_completion_tokens"].sum()) == sum(words(a) for a in answers)
    assert (out["judge_prompt_tokens"] > 0).all()


def test_revise_records_its_critique_and_revision_requests(tmp_path):
    from helpers import ScriptedModel, candidate_frame
    from datagen.steps.revise import ReviseConfig, ReviseStage

    model = ScriptedModel(["The answer could name its units and say why, in plain words for the reader."])
    stage = ReviseStage(ReviseConfig(), backend_factory=lambda: model)
    out = stage(candidate_frame({"completion": text} for text in ["It is 210.", "Three point five hours is 210 minutes."]))
    sent = [request for call in model.calls for request in call.requests]
    assert len(sent) == 4  # a critique and a revision per row
    assert int(out["revise_prompt_tokens"].sum()) == sum(words(m["content"]) for r in sent for m in r.messages)
    assert int(out["revise_completion_tokens"].sum()) == sum(words(model._text(r, 0)) for r in sent)


def test_converse_records_both_roles_requests_at_every_turn(tmp_path, monkeypatch):
    from datagen.llm.scripted import ScriptedBackend

    sent = []
    original = ScriptedBackend.generate

    def recording(self, requests, sampling):
        sent.extend((self, r) for r in requests if len(r.messages) > 2)  # generation's have a system and a user message
        return original(self, requests, sampling)

    monkeypatch.setattr(ScriptedBackend, "generate", recording)
    recipe = make_recipe(tmp_path)
    stage = '{stage: converse, turns: 3, user_system: "You are {{ persona }} asking about {{ topic }}."}'
    out = tmp_path / "out"
    run_pipeline(load_recipe(recipe, ["stages=[]", f"stages.+={stage}"]), out, progress="none")
    rows = pl.read_parquet(out / "run" / "stages" / "01_converse" / "*.parquet")
    assert len(sent) == rows.height * 2 * 2  # (turns - 1) x (user, assistant) per row
    assert int(rows["converse_prompt_tokens"].sum()) == sum(words(m["content"]) for _, r in sent for m in r.messages)
    assert int(rows["converse_completion_tokens"].sum()) == sum(words(model._text(r, 0)) for model, r in sent)
    record = json.loads((out / "run" / "manifest.json").read_text())["tokens"]
    assert record["steps"][1]["prompt_tokens"] == int(rows["converse_prompt_tokens"].sum())

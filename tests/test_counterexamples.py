"""Counterexample sets from error clusters: failures in, clusters and a budget split, prompts from
the clusters' seeds, checked counterexamples and verified corrections out, plus fix/failure pairs.

The failures are pipelines/examples/failures.jsonl: real-looking failed cases of three planted error
types (unit conversions with a wrong factor, off-by-one counts, percentages of percentages added or
cancelled), tagged, so subsets in known proportions have a known right clustering.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
import yaml

from helpers import PIPELINES, TEMPLATES, datagen_cli, train_dpo, write_yaml
from datagen.text.answers import equivalent, extract_answer, parse_reference
from datagen.llm.base import Completion, Generation
from datagen.llm.scripted import ScriptedBackend
from datagen.cli import main
from datagen.counterexamples.allocate import allocate
from datagen.counterexamples.clusters import cluster_failures, distinctive_terms, embed_pairs
from datagen.counterexamples.config import InputConfig
from datagen.sources.failures import read_failures, read_train
from datagen.counterexamples.output import write_pairs
from datagen.counterexamples.plan import make_plan
from datagen.text.embeddings import load_encoder
from datagen.errors import DatagenError
from datagen.run.executor import expand_prompts, run_pipeline
from datagen.recipe import load_recipe
from datagen.steps.counterexample import parse_counterexample

FAILURES = PIPELINES / "examples" / "failures.jsonl"
TRAIN = PIPELINES / "examples" / "train.jsonl"
OFF_BY_ONE, PERCENT, UNITS = "off_by_one", "percent_of_percent", "unit_conversion"
# 3 : 2 : 1 (the shipped file weighs percentages double; the plan tests set severities themselves).
PLANTED = {OFF_BY_ONE: 30, PERCENT: 20, UNITS: 10}
EVEN = {OFF_BY_ONE: 1.0, PERCENT: 1.0, UNITS: 1.0}


def shipped_failures() -> list[dict]:
    return [json.loads(line) for line in FAILURES.read_text().splitlines()]


def planted(path: Path, counts: dict[str, int], severity: dict[str, float] | None = None) -> Path:
    """The first `counts[tag]` failures of each type, in file order (types interleaved)."""
    taken, seen = [], Counter()
    for row in shipped_failures():
        if seen[row["tag"]] < counts.get(row["tag"], 0):
            seen[row["tag"]] += 1
            taken.append(row | ({"severity": severity[row["tag"]]} if severity else {}))
    path.write_text("".join(json.dumps(row) + "\n" for row in taken))
    return path


def by_type(plan) -> dict[str, dict]:
    """The plan's report entry of each cluster, keyed by the planted type most of it holds."""
    return {max(c["tags"], key=c["tags"].get): c for c in plan.report()["clusters"]}


def purity(clusters, tags: list[str]) -> float:
    return sum(Counter(tags[i] for i in c.members).most_common(1)[0][1] for c in clusters) / len(tags)


# ---- allocation: a pure function -------------------------------------------------------------


def test_allocation_is_proportional_and_exact():
    assert allocate([30, 20, 10], 270) == [135, 90, 45]
    assert allocate([30, 60, 10], 270) == [81, 162, 27]
    # 101.25 / 67.5 / 101.25: the one unit left goes to the largest remainder.
    assert allocate([30, 20, 30], 270) == [101, 68, 101]
    rng = random.Random(5)
    for _ in range(300):
        weights = [rng.choice([0.0, rng.random() * 10, float(rng.randint(1, 50))]) for _ in range(rng.randint(1, 9))]
        if not any(weights):
            weights[0] = 1.0
        total = rng.randint(0, 500)
        counts = allocate(weights, total)
        assert sum(counts) == total
        for w, count in zip(weights, counts):
            quota = total * w / sum(weights)
            assert abs(count - quota) < 1, (weights, total, counts)
            if w == 0:
                assert count == 0


def test_allocation_edge_cases():
    assert allocate([0, 5, 0], 7) == [0, 7, 0], "zero severity gets nothing, even with units to spare"
    # A budget smaller than the number of clusters: the largest quotas get the units.
    assert allocate([3, 2, 1, 1], 2) == [1, 1, 0, 0]
    assert allocate([1, 1, 1], 1) == [1, 0, 0], "ties: the earlier cluster"
    assert allocate([1, 2, 2], 1) == [0, 1, 0], "remainder ties: the larger weight, then the earlier cluster"
    assert allocate([4, 4], 0) == [0, 0]
    with pytest.raises(ValueError, match="every weight is zero"):
        allocate([0, 0], 10)
    for bad in ([-1, 2], [float("nan"), 1], [float("inf"), 1]):
        with pytest.raises(ValueError, match="finite and >= 0"):
            allocate(bad, 10)


# ---- clustering the planted failures --------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    """Every shipped failure embedded once; tests cluster subsets of these vectors."""
    rows = shipped_failures()
    _, joint = embed_pairs(load_encoder(), [r["prompt"] for r in rows], [r["output"] for r in rows])
    return rows, joint


def subset(embedded, counts: dict[str, int]):
    rows, joint = embedded
    seen, keep = Counter(), []
    for i, row in enumerate(rows):
        if seen[row["tag"]] < counts[row["tag"]]:
            seen[row["tag"]] += 1
            keep.append(i)
    return [rows[i] for i in keep], joint[keep]


@pytest.mark.slow  # > 4 s on 2 cores (sandbox runs / k-means / a killed child process)
def test_silhouette_recovers_the_planted_types(embedded):
    rows, vectors = subset(embedded, PLANTED)
    tags = [r["tag"] for r in rows]
    clustering = cluster_failures(vectors, [f"{r['prompt']}\n{r['output']}" for r in rows], k=None, k_range=(2, 8), seed=11)
    assert len(clustering.clusters) == 3 and max(clustering.silhouettes, key=clustering.silhouettes.get) == 3
    assert purity(clustering.clusters, tags) >= 0.9
    assert sorted(c.size for c in clustering.clusters) == [10, 20, 30]
    words = {OFF_BY_ONE: {"counting"}, PERCENT: {"percent", "price", "dollars", "discount"},
             UNITS: {"convert", "liters", "grams", "kilograms", "meters", "milliliters", "centimeters"}}
    for cluster in clustering.clusters:
        kind = Counter(tags[i] for i in cluster.members).most_common(1)[0][0]
        assert set(cluster.terms) & words[kind], (kind, cluster.terms)
        assert "answer" not in cluster.terms, "a word in every cluster distinguishes none"
        # Members most central first: the similarity to the centroid only goes down.
        assert np.all(np.diff(cluster.centrality) <= 1e-6)


@pytest.mark.slow  # shares the module's `embedded` fixture: the sentence encoder over every failure (~7 s)
def test_silhouette_may_split_a_type_into_subtypes_that_stay_pure(embedded):
    """Unit conversions hold three families (mass, volume, length): with many of them, the
    silhouette prefers those sub-clusters; a narrower k_range (or k) asks for coarser clusters."""
    rows, vectors = subset(embedded, {UNITS: 30, OFF_BY_ONE: 20, PERCENT: 10})
    tags = [r["tag"] for r in rows]
    texts = [r["prompt"] for r in rows]
    wide = cluster_failures(vectors, texts, k=None, k_range=(2, 8), seed=11)
    assert len(wide.clusters) > 3 and purity(wide.clusters, tags) >= 0.9
    assert {Counter(tags[i] for i in c.members).most_common(1)[0][0] for c in wide.clusters} == {UNITS, OFF_BY_ONE, PERCENT}
    narrow = cluster_failures(vectors, texts, k=None, k_range=(2, 4), seed=11)
    assert len(narrow.clusters) == 3 and purity(narrow.clusters, tags) >= 0.9
    given = cluster_failures(vectors, texts, k=3, k_range=(2, 8), seed=11)
    assert given.silhouettes == {} and purity(given.clusters, tags) >= 0.9


def test_distinctive_terms_are_class_based_tf_idf():
    docs = ["counting pages counting days answer", "convert liters convert grams answer", "percent discount price answer"]
    assert distinctive_terms(docs, top=2) == [["counting", "days"], ["convert", "grams"], ["discount", "percent"]]
    assert distinctive_terms(["12 34", "the and"]) == [[], []]


# ---- the plan: budget by size x severity ----------------------------------------------------


@pytest.mark.slow  # embeds 60 failures, k by silhouette
def test_plan_allocates_the_budget_in_proportion_and_severity_shifts_it(tmp_path):
    # k is given: choosing it is the clustering tests' job.
    even = make_plan(InputConfig(failures=str(planted(tmp_path / "even.jsonl", PLANTED, EVEN)), k=3), 270, seed=11)
    clusters = by_type(even)
    assert {t: c["budget"] for t, c in clusters.items()} == {OFF_BY_ONE: 135, PERCENT: 90, UNITS: 45}
    assert sum(c["budget"] for c in clusters.values()) == 270
    for entry, p in zip(even.report()["clusters"], even.clusters):
        # A quarter of the budget re-solves failures, as many as the cluster has (all have an expected).
        assert entry["corrections"] == len(p.corrections) == min(math.floor(p.budget * 0.25 + 0.5), p.cluster.size)
        assert entry["corrections"] + entry["new_problems"] == entry["budget"]
        assert entry["central"] == [even.failures["failure_id"][int(i)] for i in p.cluster.members[:3]]

    severe = planted(tmp_path / "severe.jsonl", PLANTED, {OFF_BY_ONE: 1.0, PERCENT: 3.0, UNITS: 1.0})
    shifted = by_type(make_plan(InputConfig(failures=str(severe), k=3), 270, seed=11))
    assert {t: c["budget"] for t, c in shifted.items()} == {OFF_BY_ONE: 81, PERCENT: 162, UNITS: 27}
    assert shifted[PERCENT]["severity"] == 3.0 and shifted[PERCENT]["weight"] == 60.0


def test_plan_errors_name_the_file_and_column(tmp_path, monkeypatch):
    def no_encoder(*args, **kwargs):
        raise AssertionError("bad input is refused before the encoder loads")

    monkeypatch.setattr("datagen.counterexamples.plan.load_encoder", no_encoder)
    zero = planted(tmp_path / "zero.jsonl", {OFF_BY_ONE: 3, UNITS: 3}, {OFF_BY_ONE: 0.0, UNITS: 0.0})
    with pytest.raises(DatagenError, match=r"zero\.jsonl: severity: every weight is zero"):
        make_plan(InputConfig(failures=str(zero)), 10, seed=0)
    with pytest.raises(DatagenError, match=r"input\.k: k \(9\) is larger than the number of failures \(6\)"):
        make_plan(InputConfig(failures=str(zero), k=9), 10, seed=0)


# ---- reading the inputs ---------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_read_failures_fills_defaults_and_keeps_ids(tmp_path):
    frame = read_failures(write_jsonl(tmp_path / "f.jsonl", [
        {"prompt": "How many odd numbers are there from 1 to 9?", "output": "4", "expected": 5},
        {"prompt": "What is 10% of 10% of 500?", "output": "100", "severity": 2},
    ]))
    assert frame["failure_id"].to_list() == ["failure-1", "failure-2"]
    assert frame["expected"].to_list() == ["5", None], "numbers become text; a missing one is null"
    assert frame["severity"].to_list() == [1.0, 2.0] and frame["tag"].to_list() == [None, None]
    named = read_failures(write_jsonl(tmp_path / "g.jsonl", [{"id": 7, "question": "Q?", "output": "A", "sev": 0.5}]), "question", "sev", True)
    assert named.row(0, named=True) == {"failure_id": "7", "prompt": "Q?", "output": "A", "expected": None, "tag": None, "severity": 0.5,
                                       "kind": "math", "tests": None}


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ([{"prompt": "Q", "expected": "1"}], {}, r"f\.jsonl: output: missing column \(the file has: prompt, expected\)"),
        ([{"prompt": "Q", "output": "A"}, {"prompt": " ", "output": "A"}], {}, r"f\.jsonl: prompt: row 2 is empty"),
        ([{"prompt": "Q", "output": 3}], {}, r"f\.jsonl: output: column 'output' holds Int64, not text"),
        ([{"id": "a", "prompt": "Q", "output": "A"}, {"id": "a", "prompt": "R", "output": "B"}], {}, r"f\.jsonl: id: duplicate id 'a'"),
        ([{"prompt": "Q", "output": "A", "severity": -1}], {}, r"f\.jsonl: severity: row 1: severity must be a finite number >= 0"),
        ([{"prompt": "Q", "output": "A", "severity": "high"}], {}, r"f\.jsonl: severity: holds String, not numbers"),
        ([{"prompt": "Q", "output": "A"}], {"severity_column": "weight", "severity_required": True}, r"f\.jsonl: weight: missing column"),
    ],
)
def test_read_failures_rejects_bad_input(tmp_path, rows, kwargs, message):
    with pytest.raises(DatagenError, match=message):
        read_failures(write_jsonl(tmp_path / "f.jsonl", rows), **kwargs)


def test_read_train_takes_prompts_or_the_first_user_message(tmp_path):
    plain = read_train(TRAIN)
    assert plain.height == 36 and plain["train_id"][0] == "mwp-train_speed"
    pl.DataFrame({"messages": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                                {"role": "assistant", "content": "4"}]]}).write_parquet(tmp_path / "sft.parquet")
    assert read_train(tmp_path / "sft.parquet")["prompt"].to_list() == ["What is 2 + 2?"]
    with pytest.raises(DatagenError, match=r"t\.jsonl: prompt: missing column"):
        read_train(write_jsonl(tmp_path / "t.jsonl", [{"question": "Q"}]))


# ---- parsing a counterexample ---------------------------------------------------------------


def test_parse_counterexample_formats():
    good = parse_counterexample("**Problem:** At a fair, tickets 12 through 40 are sold. How many tickets is that?\n"
                                "**Solution:** Count both ends: 40 - 12 + 1 = 29.\n**Answer:** \\boxed{29}", min_words=5)
    assert good["reason"] is None and good["problem"].startswith("At a fair") and good["answer"] == "29"
    assert good["solution"].startswith("Count both ends") and good["solution"].endswith("\\boxed{29}")
    assert parse_counterexample("Just a number: 29")["reason"] == "bad_format"
    assert parse_counterexample("Problem: <the new problem>\nSolution: <the correct step-by-step solution>")["reason"] == "bad_format"
    assert parse_counterexample("Problem: How many? Count them all.\nSolution: Many.\nAnswer: many")["reason"] == "no_answer"
    assert parse_counterexample("Problem: How many? Count.\nSolution: 3\nAnswer: 3", require_box=False)["answer"] == "3"


# ---- the recipe end to end, with a scripted model -------------------------------------------

NEW_PROBLEMS = [
    "Problem: On a farm, 4 crates each hold 2.5 kilograms of apples. How many grams of apples are there altogether?\n"
    "Solution: 4 x 2.5 = 10 kg, and 1 kg = 1000 g, so 10 x 1000 = 10000 g.\nAnswer: \\boxed{10000}",
    "**Problem:** At a music festival, the wristbands numbered 215 through 240 are handed out. How many wristbands are handed out?\n"
    "**Solution:** Both ends count: 240 - 215 + 1 = 26.\n**Answer:** \\boxed{26}",
    # A training example, asked again: not new.
    "Problem: A shirt normally costs $40. It is on sale for 25% off. What is the sale price in dollars?\n"
    "Solution: 40 x 0.75 = 30.\nAnswer: \\boxed{30}",
    "Here is a new problem about percentages, without the format.",
    "Problem: A tank holds 3 cubic meters of water. How many liters of water does it hold when it is full?\n"
    "Solution: Multiply by one thousand.\nAnswer: three thousand",
]


class EvalOracle(ScriptedBackend):
    """A scripted model: a failure asked again gets a solution ending in its expected answer (sample
    0) and then its recorded failing output; a counterexample prompt gets the canned completions in
    turn, plus one that copies a failure it was shown."""

    def __init__(self, failures: list[dict]):
        super().__init__([])
        self.cases = {f["prompt"]: f for f in failures}
        self.turn = 0

    def generate(self, requests, sampling):
        out = []
        for request in requests:
            user = request.messages[-1]["content"]
            case = self.cases.get(user)
            texts = []
            for i in range(sampling.n):
                if case is not None:
                    texts.append(f"Redo it step by step, counting carefully.\n\\boxed{{{case['expected']}}}" if i == 0 else case["output"])
                else:
                    shown = user.split("Problem 1: ", 1)[1].split("\n", 1)[0]
                    canned = NEW_PROBLEMS + [f"Problem: {shown}\nSolution: As before.\nAnswer: \\boxed{{1}}"]
                    texts.append(canned[self.turn % len(canned)])
                    self.turn += 1
            out.append(Generation([Completion(t, "stop", len(t.split())) for t in texts], 50))
        return out


CX_RECIPE = {
    "name": "cx-test",
    "seed": 11,
    "template_dirs": [str(TEMPLATES), str(TEMPLATES / "failures")],
    "templates": [{"name": "counterexamples"}, {"name": "corrections"}],
    "input": {"failures": "failures.jsonl", "train": "train.jsonl", "k": 3},
    "budget": 20,
    "backend": {"kind": "scripted", "sampling": {"n": 2, "max_tokens": 400}},
    "stages": [
        {"stage": "finished"},
        {"stage": "verify", "templates": ["corrections"], "verifiers": {"corrections": {"kind": "math"}}},
        {"stage": "counterexample"},
    ],
    "output": {"format": "counterexamples"},
    "execution": {"shard_size": 8},
}


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cx")
    recipe = write_yaml(root / "pipelines" / "cx.yaml", CX_RECIPE)
    # A copy: the shipped example training set is only used with the shipped example failures.
    (root / "pipelines" / "train.jsonl").write_text(TRAIN.read_text())
    failures = planted(root / "pipelines" / "failures.jsonl", PLANTED, EVEN)
    loaded = load_recipe(recipe)
    out = root / "out"
    import datagen.counterexamples.plan as plan_module

    made = []
    with pytest.MonkeyPatch.context() as patch:
        make_plan = plan_module.make_plan
        patch.setattr(plan_module, "make_plan", lambda *args, **kwargs: made.append(args) or make_plan(*args, **kwargs))
        result = run_pipeline(loaded, out, progress=False, backend_factory=lambda: EvalOracle(shipped_failures()))
    result.plans_made = len(made)
    return loaded, out, result, [json.loads(line) for line in failures.read_text().splitlines()]


def test_one_run_clusters_the_failures_once(scripted_run):
    """Prompt expansion and the counterexample step's report share the run's plan (held by the loaded
    recipe, no module-level cache): one clustering per run, and a fresh load makes its own."""
    loaded, _, result, _ = scripted_run
    assert result.plans_made == 1
    assert loaded.counterexample_plan() is loaded.counterexample_plan()
    assert load_recipe(loaded.path)._plan is None


def test_recipe_prompts_follow_the_plan(scripted_run):
    loaded, out, _, failures = scripted_run
    assert loaded.recipe.input.failures == str(out.parent / "pipelines" / "failures.jsonl"), "relative to the recipe file"
    prompts = pl.read_parquet(out / "run" / "prompts.parquet")
    assert prompts.height == 20 and prompts["prompt_id"].n_unique() == 20
    assert expand_prompts(loaded).equals(prompts), "same recipe, same prompts"
    budgets = dict(prompts.group_by("cluster_id").len().rows())
    assert sorted(budgets.values()) == [3, 7, 10], "20 x (30, 20, 10) / 60, largest remainder"
    members = {f["id"]: f for f in failures}
    for row in prompts.iter_rows(named=True):
        tags = {members[i]["tag"] for i in row["seed_ids"]}
        assert len(tags) == 1, "a prompt's seeds come from one cluster"
        user = row["messages"][-1]["content"]
        if row["role"] == "correction":
            failure = members[row["failure_id"]]
            assert row["messages"] == [{"role": "user", "content": failure["prompt"]}]
            assert row["reference"] == failure["expected"] and row["failure_output"] == failure["output"]
        else:
            assert row["template_id"] == "counterexamples" and len(row["seed_ids"]) == 3 and len(row["neighbour_ids"]) == 3
            assert row["persona"] and row["difficulty"] in ("easy", "medium", "hard"), "the template's own slots are drawn too"
            for failure_id in row["seed_ids"]:
                assert members[failure_id]["prompt"] in user and members[failure_id]["expected"] in user
            assert "Problem:" in user and "\\boxed{" in user
    assert prompts.filter(pl.col("role") == "correction").height == 6, "round(budget / 4) per cluster: 3 + 2 + 1"


def test_recipe_keeps_new_problems_and_verified_corrections(scripted_run):
    _, out, result, failures = scripted_run
    candidates = pl.read_parquet(out / "run" / "stages" / "03_counterexample" / "*.parquet")
    new = candidates.filter(pl.col("role") == "counterexample")
    reasons = Counter(new["counterexample_reason"].to_list())
    assert set(reasons) == {None, "copies_failure", "in_training_set", "bad_format", "no_answer", "exact_duplicate"}
    assert reasons[None] == 2, "each new problem is kept once"
    assert new.filter(pl.col("counterexample_reason") == "in_training_set")["counterexample_match"].unique().to_list() == ["mwp-shirt_discount"]
    copied = new.filter(pl.col("counterexample_reason") == "copies_failure")
    assert copied.height and set(copied["counterexample_match"]) <= {f["id"] for f in failures}
    fixes = candidates.filter(pl.col("role") == "correction")
    assert fixes["counterexample_keep"].is_null().all(), "the counterexample stage leaves corrections alone"
    assert fixes.filter(pl.col("keep")).height == 6 and set(fixes.filter(~pl.col("keep"))["verify_reason"]) == {"wrong_answer"}

    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows == result.rows_written == 8
    for row in ds:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["cluster_label"] and row["seed_ids"] and row["cluster_id"] in (0, 1, 2)
        if row["role"] == "counterexample":
            assert "Problem" not in row["messages"][0]["content"] and "\\boxed{" in row["messages"][1]["content"]
            assert row["answer"] in ("10000", "26") and row["failure_id"] is None
        else:
            answer = extract_answer(row["messages"][1]["content"])
            assert equivalent(parse_reference(row["answer"]), answer) and row["failure_id"] == row["seed_ids"][0]


def test_only_kept_corrections_count_as_eval_items_trained_on():
    from datagen.counterexamples.funnel import add_cluster_funnel

    report = {"clusters": [{"id": 0, "corrected_failure_ids": ["a", "b"]}, {"id": 1, "corrected_failure_ids": ["c"]}],
              "corrected_failure_ids": ["a", "b", "c"]}
    rows = pl.DataFrame({
        "cluster_id": [0, 0, 0, 1, 1],
        "role": ["correction", "correction", "correction", "correction", "counterexample"],
        "failure_id": ["a", "a", "b", "c", None],
        "keep": [True, False, False, False, True],
        "dropped_by": [None, "verify", "verify", "finished", None],
        "verify_reason": [None, "wrong_answer", "wrong_answer", None, None],
        "finished_reason": [None, None, None, "truncated", None],
    })
    out = add_cluster_funnel(report, rows.lazy())
    assert out["corrected_failure_ids"] == ["a"], "b and c were asked again, but no correction of theirs was kept"
    assert out["asked_failure_ids"] == ["a", "b", "c"]
    assert [c["corrected_failure_ids"] for c in out["clusters"]] == [["a"], []]
    assert [(c["kept"], c["kept_corrections"]) for c in out["clusters"]] == [(0, 1), (1, 0)]


def test_recipe_writes_pairs_and_the_cluster_report(scripted_run):
    loaded, out, result, failures = scripted_run
    assert result.pairs_written == 6, "run_pipeline itself writes the fix/failure pairs"
    pairs = datasets.load_dataset(str(out / "pairs"), split="train")
    assert pairs.num_rows == 6
    assert write_pairs(out, loaded) == 6, "rebuilding them from the finished run gives the same"
    by_id = {f["id"]: f for f in failures}
    for pair in pairs:
        failure = by_id[pair["failure_id"]]
        assert pair["prompt"] == [{"role": "user", "content": failure["prompt"]}]
        assert pair["rejected"] == [{"role": "assistant", "content": failure["output"]}]
        assert pair["rejected_id"] == failure["id"] != pair["chosen_id"], "the rejected side is the eval's output for that failure"
        assert pair["chosen"][0]["content"].endswith(f"\\boxed{{{failure['expected']}}}") and pair["strategy"] == "correction"
    card = (out / "README.md").read_text()
    report = yaml.safe_load(card.split("### counterexample\n\n```yaml\n", 1)[1].split("```", 1)[0])
    assert report["budget"] == 20 and report["k_chosen_by"] == "given"
    assert sorted((c["size"], c["budget"], c["corrections"]) for c in report["clusters"]) == [(10, 3, 1), (20, 7, 2), (30, 10, 3)]
    assert sum(c["kept"] for c in report["clusters"]) == 2 and sum(c["kept_corrections"] for c in report["clusters"]) == 6
    data = pl.read_parquet(out / "data" / "*.parquet")
    trained = set(data.filter(pl.col("role") == "correction")["failure_id"])
    assert set(report["corrected_failure_ids"]) == trained and len(report["corrected_failure_ids"]) == len(trained)
    html = (out / "run" / "report.html").read_text()
    assert "Remove these eval items from your held-out eval" in html and all(i in html for i in trained)
    assert "(counterexamples format)" in card and "(dpo format)" in (out / "pairs" / "README.md").read_text()


# ---- recipe and command-line errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budget": None}, "budget: required with an input section"),
        ({"input": None}, "the 'counterexample' stage needs the recipe's input section"),
        ({"templates": [{"name": "counterexamples"}, {"name": "corrections", "count": 3}]}, r"templates\[1\]\.count: with an input section"),
        ({"templates": [{"name": "corrections"}]}, "the input section uses the template 'counterexamples'"),
        ({"stages": [{"stage": "finished"}]}, "output.format: counterexamples needs a counterexample stage"),
        ({"input": {"failures": "f.jsonl", "k_range": [3, 2]}}, r"k_range: lo \(3\) is larger than hi \(2\)"),
    ],
)
def test_bad_counterexample_recipes(tmp_path, change, message):
    data = CX_RECIPE | {key: value for key, value in change.items() if value is not None}
    for key in [key for key, value in change.items() if value is None]:
        del data[key]
    with pytest.raises(DatagenError, match=message):
        load_recipe(write_yaml(tmp_path / "r.yaml", data))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("nocolumn.jsonl", '{"prompt": "How many days?", "expected": "3"}\n', "nocolumn.jsonl: output: missing column (the file has: prompt, expected)"),
        ("empty.jsonl", "", "empty.jsonl: failures file is empty"),
        ("missing.parquet", None, "missing.parquet: failures file not found"),
        ("failures.csv", "prompt,output\n", "failures.csv: unknown failures file extension '.csv': use .parquet or .jsonl"),
    ],
)
def test_cli_rejects_bad_failures_in_one_line(tmp_path, monkeypatch, capsys, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    monkeypatch.chdir(tmp_path)  # in-process, as the console script would run it there
    assert main(["counterexamples", name, "--budget", "10", "--out", "out"]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.strip().splitlines() == [f"datagen: error: {message}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # the installed command in a subprocess
def test_installed_cli_exits_2_on_bad_failures(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = datagen_cli("counterexamples", "empty.jsonl", "--budget", "10", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["datagen: error: empty.jsonl: failures file is empty"]
    assert not (tmp_path / "out").exists()


def test_cli_short_form_runs_the_recipe_with_overrides(tmp_path, monkeypatch, capsys):
    failures = planted(tmp_path / "mine.jsonl", {OFF_BY_ONE: 6, PERCENT: 4, UNITS: 2})
    recipe = write_yaml(tmp_path / "cx.yaml", CX_RECIPE | {"backend": {"kind": "scripted", "responses": NEW_PROBLEMS[:2], "sampling": {"n": 1}}})
    monkeypatch.chdir(tmp_path)  # in-process, as the console script would run it there
    code = main(["counterexamples", failures.name, "--budget", "9", "--k", "2", "--out", "out", "--recipe", str(recipe),
                 "--no-progress", "--set", "input.correction_share=0"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert "no fix/failure DPO pairs" in printed.out and not (tmp_path / "out" / "pairs").exists()
    manifest = json.loads((tmp_path / "out" / "run" / "manifest.json").read_text())
    assert manifest["prompts"] == 9 and manifest["complete"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "k: 2\n" in card and "failures: mine.jsonl\n" in card and "train: null" in card, "paths relative to the recipe's folder"
    ds = datasets.load_dataset(str(tmp_path / "out"), split="train")
    assert 0 < ds.num_rows <= 2 and set(ds["role"]) == {"counterexample"}


def test_validate_reports_a_bad_failures_file_given_with_set(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "Q", "output": "A"}, {"prompt": "R"}])
    assert main(["validate", str(PIPELINES / "counterexamples.yaml"), "--set", f"input.failures={bad}"]) == 2
    assert capsys.readouterr().err.strip() == f"datagen: error: {bad}: output: row 2 is empty"


# ---- the shipped recipe on the CPU default model --------------------------------------------


@pytest.mark.model
def test_cpu_default_run_loads_with_datasets_and_its_pairs_train_with_dpo(tmp_path, model_cli):
    out = tmp_path / "out"
    result = model_cli("counterexamples", FAILURES, "--budget", "8", "--train", TRAIN, "--out", out, "--no-progress",
                       "--set", "input.correction_share=0.5", "--set", "backend.sampling.max_tokens=256",
                       "--set", "seed=12")  # seed 11 gave no verified fix once k is chosen over k-means seeds
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["prompts"] == 8 and "SmolLM2-135M" in manifest["model"]
    candidates = pl.read_parquet(out / "run" / "stages" / "05_counterexample" / "*.parquet")
    assert candidates.height == 32 and set(candidates["role"]) == {"counterexample", "correction"}
    for row in candidates.filter(pl.col("verify_keep").is_not_null()).iter_rows(named=True):
        answer = extract_answer(row["completion"])  # the verifier's verdict is the math, nothing else
        assert row["verify_keep"] == (answer is not None and equivalent(parse_reference(row["reference"]), answer))

    kept = candidates.filter(pl.col("keep"))
    assert kept.height > 0, "the fixed seed yields rows on this model"
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows == kept.height
    for row in ds:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["cluster_label"] and row["seed_ids"]
    fixes = kept.filter(pl.col("role") == "correction")
    assert fixes.height > 0, "the fixed seed gives a verified fix on this model (1 of 16 correction samples when written)"
    pairs = datasets.load_dataset(str(out / "pairs"), split="train")
    assert pairs.num_rows == fixes["prompt_id"].n_unique()
    for pair in pairs:
        assert pair["prompt"][-1]["role"] == "user" and pair["chosen"] != pair["rejected"]
    train_dpo(pairs, tmp_path / "dpo")

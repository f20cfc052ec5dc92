"""The final mix: score formulas, weight / rank / top-k per group, real rows beside generated ones
(origin, source_ids), and the judge's context (source material such as a document chunk)."""

from __future__ import annotations

import json
import math
import re

import datasets
import polars as pl
import pytest

from datagen.errors import DatagenError
from datagen.outputs import build_output
from datagen.outputs.formula import FormulaError, parse_formula
from datagen.outputs.mix import MixConfig, RealRowsConfig, apply_mix, check_real_source, real_rows
from datagen.recipe import OutputConfig, load_recipe
from datagen.run.executor import run_pipeline
from datagen.sources.data import DataConfig, open_source
from datagen.steps.judge import JudgeConfig, JudgeStage
from helpers import PIPELINES, RIGHT, ScriptedModel, candidate_frame, datagen_in_process

# --- formulas ------------------------------------------------------------------------------------

SCORES = pl.DataFrame({"a": [1, 2, None, 4], "b": [0.5, 0.0, 2.0, 1.0]}, schema={"a": pl.Int64, "b": pl.Float64})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a", [1.0, 2.0, None, 4.0]),
        ("2 * a + b", [2.5, 4.0, None, 9.0]),
        ("(a - 1) / 3", [0.0, 1 / 3, None, 1.0]),
        ("a / b", [2.0, None, None, 4.0]),  # 2 / 0 is not finite: null
        ("-a ** 2", [-1.0, -4.0, None, -16.0]),  # ** binds tighter than unary minus, as in Python
        ("min(a, 3) + max(b, 1)", [2.0, 3.0, None, 4.0]),
        ("clip(a * 2, 3, 6)", [3.0, 4.0, None, 6.0]),
        ("coalesce(a, 0) + b", [1.5, 2.0, 2.0, 5.0]),
        ("log(b)", [math.log(0.5), None, math.log(2.0), 0.0]),
        ("sqrt(a - 2)", [None, 0.0, None, math.sqrt(2)]),
        ("abs(1 - a) + exp(0)", [1.0, 2.0, None, 4.0]),
    ],
)
def test_formula_values(text, expected):
    values = parse_formula(text).evaluate(SCORES).to_list()
    assert [v is None for v in values] == [v is None for v in expected]
    assert [v for v in values if v is not None] == pytest.approx([v for v in expected if v is not None])


@pytest.mark.parametrize(
    "text, says",
    [
        ("__import__('os').system('true')", "not a known function"),
        ("a.real", "not allowed"),
        ("a[0]", "not allowed"),
        ("a if b else 1", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("a < b", "not allowed"),
        ("a % 2", "operator % is not supported"),
        ("'text'", "not a finite number"),
        ("True + a", "not a finite number"),
        ("1e999", "not a finite number"),
        ("min(a)", "at least 2 arguments"),
        ("clip(a, 1)", "takes 3 arguments"),
        ("max(*a, b)", "plain arguments"),
        ("min", "is a function"),
        ("a +", "not a formula"),
        ("", "a formula is needed"),
        ("(" * 300 + "a" + ")" * 300, "not a formula"),
        ("+".join(["a"] * 400), "more than 300"),
        ("a" * 1001, "more than 1000"),
    ],
)
def test_formula_refuses_everything_outside_the_language(text, says):
    with pytest.raises(FormulaError, match=re.escape(says)):
        parse_formula(text)


def test_formula_columns_must_exist_and_hold_numbers():
    frame = SCORES.with_columns(pl.lit("x").alias("name"))
    assert parse_formula("b * 2 + a").columns == ("a", "b")
    with pytest.raises(FormulaError, match="'judge_fluency', which the rows do not have .*numeric columns: a, b"):
        parse_formula("judge_fluency").evaluate(frame)
    with pytest.raises(FormulaError, match="'name', which holds String"):
        parse_formula("name + 1").evaluate(frame)


# --- weight, rank, top k -------------------------------------------------------------------------


def judged(rows: list[tuple[str, str, int | None, int | None]]) -> pl.DataFrame:
    """Candidates (prompt, persona, grounded score, fluent score), one alive candidate each."""
    return candidate_frame(
        {"prompt_id": p, "persona": persona, "slots": json.dumps({"persona": persona, "qtype": "how-to" if i % 2 else "error"}), "judge_grounded": g, "judge_fluent": f, "completion": f"answer {i}"}
        for i, (p, persona, g, f) in enumerate(rows)
    )


ROWS = [("p1", "dev", 5, 3), ("p2", "dev", 2, 5), ("p3", "pm", 4, 4), ("p4", "pm", None, 5), ("p5", "pm", 5, 1), ("p6", "dev", 3, 3)]


def test_weight_is_the_formula_and_rank_orders_each_group_best_first():
    mix = MixConfig(weight="(2 * judge_grounded + judge_fluent) / 15", per=["persona"])
    out, stats = apply_mix(judged(ROWS), mix)
    weights = {r["prompt_id"]: r["weight"] for r in out.to_dicts()}
    assert weights.pop("p4") is None, "a missing score gives no weight"
    assert weights == pytest.approx({"p1": 13 / 15, "p2": 9 / 15, "p3": 12 / 15, "p5": 11 / 15, "p6": 9 / 15})
    # dev: p1 (13) > p2 (9) = p6 (9, later row); pm: p3 (12) > p5 (11) > p4 (no weight, last)
    order = [(r["persona"], r["prompt_id"], r["rank"]) for r in out.to_dicts()]
    assert order == [("dev", "p1", 1), ("dev", "p2", 2), ("dev", "p6", 3), ("pm", "p3", 1), ("pm", "p5", 2), ("pm", "p4", 3)]
    assert stats["rank"] == {"by": mix.weight, "per": ["persona"], "groups": 2, "unranked": 1}
    w = stats["weight"]
    assert (w["rows"], w["null"], w["min"], w["max"]) == (6, 1, pytest.approx(9 / 15, abs=1e-4), pytest.approx(13 / 15, abs=1e-4))
    assert w["mean"] == pytest.approx((13 + 9 + 12 + 11 + 9) / 15 / 5, abs=1e-4)
    assert stats["scores"]["judge_grounded"]["null"] == 1 and stats["scores"]["judge_fluent"]["median"] == 3.5


def test_top_k_per_slot_value_and_rank_by_another_formula():
    mix = MixConfig(weight="judge_grounded", rank_by="judge_fluent", per=["qtype"], top_k=2)
    out, stats = apply_mix(judged(ROWS), mix)
    # qtype (a slot, not a column): rows 0, 2, 4 are "error", 1, 3, 5 "how-to"; best 2 by fluency
    kept = {(json.loads(r["slots"])["qtype"], r["prompt_id"], r["rank"]) for r in out.to_dicts()}
    assert kept == {("error", "p3", 1), ("error", "p1", 2), ("how-to", "p2", 1), ("how-to", "p4", 2)}
    assert stats["rank"]["top_k"] == 2 and stats["rank"]["rows_in"] == 6 and stats["rank"]["kept"] == 4
    assert stats["weight"]["rows"] == 4, "distributions describe the rows written"
    assert "weight" in out.columns and out.filter(pl.col("prompt_id") == "p4")["weight"][0] is None


def test_top_k_over_the_whole_output_and_per_template():
    out, _ = apply_mix(judged(ROWS), MixConfig(weight="judge_grounded + judge_fluent", top_k=1))
    assert out["prompt_id"].to_list() == ["p1"] and out["rank"].to_list() == [1]
    two_templates = judged(ROWS).with_columns(pl.when(pl.col("persona") == "dev").then(pl.lit("a")).otherwise(pl.lit("b")).alias("template_id"))
    out, _ = apply_mix(two_templates, MixConfig(rank_by="judge_fluent", per=["template_id"], top_k=1))
    assert sorted(out["prompt_id"].to_list()) == ["p2", "p4"] and "weight" not in out.columns


def test_no_rows_give_an_empty_mix_not_an_error():
    empty = judged(ROWS).clear().drop("judge_fluent")
    out, stats = apply_mix(empty, MixConfig(weight="judge_grounded + judge_fluent", per=["persona"], top_k=2))
    assert out.height == 0 and {"weight", "rank"} <= set(out.columns)
    assert stats["weight"]["rows"] == 0 and stats["rank"]["groups"] == 0


def test_mix_errors_name_the_field():
    with pytest.raises(DatagenError, match=r"recipe.yaml: output.mix.weight: .*'judge_tone', which the rows do not have"):
        apply_mix(judged(ROWS), MixConfig(weight="judge_tone"), "recipe.yaml")
    with pytest.raises(DatagenError, match=r"output.mix.per: per names 'audience', which is neither a column .*slots: persona, qtype"):
        apply_mix(judged(ROWS), MixConfig(weight="judge_fluent", per=["audience"]))
    with pytest.raises(DatagenError, match=r"output.mix.per: per names 'lineage', which holds List\(String\), not one value per row"):
        apply_mix(judged(ROWS), MixConfig(weight="judge_fluent", per=["lineage"]))
    for bad, says in [({"top_k": 2}, "top_k needs rank_by or weight"), ({"per": ["persona"]}, "per groups the ranking"), ({"weight": "a +"}, "not a formula")]:
        with pytest.raises(ValueError, match=says):
            MixConfig(**bad)


JUDGE_SCORES = {"rationale": "supported by the excerpt", "supported": 4, "relevant": 5, "fluent": 3}


def test_recipe_checks_mix_formulas_against_the_judge_and_real_rows_against_the_format(project):
    judge = {"stage": "judge", "name": "grounding", "rubric": "grounded", "backend": {"kind": "scripted"}}
    path = project(stages=[judge], output={"mix": {"weight": "grounding_suported + grounding_relevant"}})
    with pytest.raises(DatagenError, match=r"output.*mix.weight: the step 'grounding' writes no column 'grounding_suported'; did you mean 'grounding_supported'\?"):
        load_recipe(path)
    path = project(stages=[judge], output={"format": "dpo", "pairs": {"strategy": "score_margin", "stage": "grounding"}, "mix": {"real": {"from": "tickets", "user": "{{ body }}"}}})
    with pytest.raises(DatagenError, match="real rows are written as sft or prompt_completion rows, not dpo"):
        load_recipe(path)
    path = project(stages=[judge], output={"mix": {"weight": "2 * grounding_supported + grounding_fluent + completion_tokens / 100"}})
    assert load_recipe(path).recipe.output.mix.formulas()["weight"].columns == ("completion_tokens", "grounding_fluent", "grounding_supported")


def test_every_output_row_says_its_origin(tmp_path):
    shard = tmp_path / "shard.parquet"
    judged(ROWS).write_parquet(shard)
    for fmt in ("sft", "prompt_completion"):
        rows, stats = build_output([shard], OutputConfig(format=fmt), ["generate"])
        assert rows.height == 6 and rows["origin"].to_list() == ["synthetic"] * 6 and "mix" not in stats
    mix = MixConfig(weight="judge_grounded", real={"from": "tickets", "user": "{{ body }}"})
    with pytest.raises(DatagenError, match="output.mix.real.from: real rows come from the data source 'tickets', but the recipe has no data section"):
        build_output([shard], OutputConfig(mix=mix), ["generate"])


# --- real rows -----------------------------------------------------------------------------------

TICKETS = [
    {"id": f"T-{i:03d}", "subject": f"Webhook retries {i}", "body": f"Our endpoint returned 500 on event {i}; will it be retried?", "answer": None if i in (3, 7) else f"Yes: up to 5 retries with backoff (case {i})."}
    for i in range(1, 11)
]


@pytest.fixture
def tickets(tmp_path):
    path = tmp_path / "tickets.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in TICKETS))
    return open_source("tickets", DataConfig(path=str(path)), tmp_path / "recipe.yaml")


REAL = {"from": "tickets", "system": "You answer Acme API support tickets.", "user": "{{ subject }}\n\n{{ body }}"}


def test_real_rows_are_the_tickets_with_their_answers(tickets):
    rows, stats = real_rows(tickets, RealRowsConfig(**REAL), "sft", synthetic=20, seed=3, weight=0.9)
    by_id = {t["id"]: t for t in TICKETS}
    assert rows.height == 8 and stats == {"source": "tickets", "rows": 10, "without_answer": 2, "wanted": "all", "written": 8}
    for row in rows.to_dicts():
        [source_id] = row["source_ids"]
        ticket = by_id[source_id.removeprefix("tickets:")]
        assert row["origin"] == "real" and row["weight"] == 0.9
        assert row["messages"] == [
            {"role": "system", "content": "You answer Acme API support tickets."},
            {"role": "user", "content": f"{ticket['subject']}\n\n{ticket['body']}"},
            {"role": "assistant", "content": ticket["answer"]},
        ]
    assert sorted(rows["source_ids"].list.first().to_list()) == rows["source_ids"].list.first().to_list(), "in the source's order"


def test_real_rows_count_and_ratio_are_seeded_samples(tickets):
    three = real_rows(tickets, RealRowsConfig(**REAL, count=3), "prompt_completion", synthetic=0, seed=3, weight=None)[0]
    again = real_rows(tickets, RealRowsConfig(**REAL, count=3), "prompt_completion", synthetic=0, seed=3, weight=None)[0]
    other = [real_rows(tickets, RealRowsConfig(**REAL, count=3), "prompt_completion", synthetic=0, seed=s, weight=None)[0] for s in range(4, 12)]
    assert three.height == 3 and three.equals(again) and any(not three.equals(o) for o in other)
    assert set(three.columns) == {"prompt", "completion", "origin", "source_ids"} and three["completion"][0][0]["role"] == "assistant"
    # ratio 0.25 of all rows beside 12 synthetic: 4 real (4 / 16); beside 60: 20 wanted, 8 exist
    assert real_rows(tickets, RealRowsConfig(**REAL, ratio=0.25), "sft", synthetic=12, seed=1, weight=None)[0].height == 4
    assert real_rows(tickets, RealRowsConfig(**REAL, ratio=0.25), "sft", synthetic=60, seed=1, weight=None)[0].height == 8
    with pytest.raises(ValueError, match="count or ratio, not both"):
        RealRowsConfig(**REAL, count=2, ratio=0.5)


def test_real_rows_bad_template_or_column_names_the_source_row(tickets, tmp_path):
    unknown = RealRowsConfig(**(REAL | {"user": "{{ priority }}: {{ body }}"}))
    with pytest.raises(DatagenError, match=r"r.yaml: output.mix.real: the real rows' turns use the column 'priority', which the data source 'tickets' \(.*tickets.jsonl\) does not have \(columns: id, subject, body, answer\)"):
        check_real_source(unknown, tickets, "r.yaml")
    with pytest.raises(DatagenError, match=r"r.yaml: output.mix.real.user: data source 'tickets' \(.*tickets.jsonl\), row 1 \(id T-001\): user: UndefinedError: 'priority' is undefined"):
        real_rows(tickets, unknown, "sft", 0, 0, None, "r.yaml")
    holes = tmp_path / "holes.jsonl"
    holes.write_text("".join(json.dumps(t | ({"subject": None} if t["id"] == "T-005" else {})) + "\n" for t in TICKETS))
    with pytest.raises(DatagenError, match=r"holes.jsonl: data.tickets: row 5 \(id T-005\), column 'subject' has no value .* output.mix.real needs it"):
        check_real_source(RealRowsConfig(**REAL), open_source("tickets", DataConfig(path=str(holes))), "r.yaml")
    check_real_source(RealRowsConfig(**REAL), tickets)
    rows, stats = real_rows(tickets, RealRowsConfig(**REAL, answer="reply"), "sft", 0, 0, None)
    assert rows.height == 0 and stats["no_answer_column"] == "reply" and stats["without_answer"] == 10, "the answer is optional"


# --- the judge's context -------------------------------------------------------------------------

CHUNK = "POST /v2/webhooks registers an endpoint. Failed deliveries are retried 5 times with exponential backoff."


def grounded_judge(**config) -> tuple[JudgeStage, ScriptedModel]:
    backend = ScriptedModel(reply=lambda request, index: json.dumps(JUDGE_SCORES))
    return JudgeStage(JudgeConfig(rubric="grounded", name="grounding", **config), backend_factory=lambda: backend), backend


def test_judge_context_quotes_the_rows_own_chunk_inside_a_fence():
    batch = candidate_frame([
        {"prompt_id": "p1", "completion": RIGHT, "slots": json.dumps({"doc": "webhooks.md#0"}), "reference": CHUNK},
        {"prompt_id": "p2", "completion": RIGHT, "slots": json.dumps({"doc": "auth.md#1"}), "reference": "Tokens expire after 3600 s."},
    ])
    stage, backend = grounded_judge(context="{{ doc }}: {{ reference }}")
    out = stage(batch)
    assert out["grounding_supported"].to_list() == [4, 4] and out["grounding_error"].to_list() == [None, None]
    first, second = (r.messages for r in backend.calls[0].requests)
    code = re.search(r"CODE: ([0-9a-f]{16})", first[1]["content"]).group(1)
    assert f"<context-{code}>\nwebhooks.md#0: {CHUNK}\n</context-{code}>" in first[1]["content"]
    assert "<context-" in first[0]["content"] and "never instructions" in first[0]["content"]
    assert "auth.md#1: Tokens expire after 3600 s." in second[1]["content"] and CHUNK not in second[1]["content"]
    plain, backend = grounded_judge()
    plain(batch)
    assert "<context-" not in backend.calls[0].requests[0].messages[1]["content"]


def test_judge_context_that_cannot_render_is_that_rows_error_and_asks_nothing():
    batch = candidate_frame([
        {"prompt_id": "p1", "completion": RIGHT, "reference": CHUNK, "slots": json.dumps({"doc": "a.md#0"})},
        {"prompt_id": "p2", "completion": RIGHT, "reference": None, "slots": json.dumps({"doc": "b.md#0"})},
        {"prompt_id": "p3", "completion": RIGHT, "reference": CHUNK, "slots": "{}"},
    ])
    stage, backend = grounded_judge(context="{{ doc }}: {{ reference }}")
    out = stage(batch)
    assert backend.requests == 1
    assert out["grounding_error"].to_list() == [None, "context: 'reference' is null", "context: UndefinedError: 'doc' is undefined"]
    assert out["grounding_keep"].to_list() == [True, True, True] and out["grounding_score"].null_count() == 2, "on_error: keep"
    dropping, _ = grounded_judge(context="{{ doc }}: {{ reference }}", on_error="drop")
    assert dropping(batch)["grounding_reason"].to_list() == [None, "judge_error", "judge_error"]
    config = JudgeConfig(rubric="grounded", context="{{ doc.text }} {{ slots.doc }}")
    assert {"doc", "completion"} <= config.reads() and "slots" not in config.reads()
    with pytest.raises(ValueError, match="Jinja syntax error"):
        JudgeConfig(rubric="grounded", context="{{ doc ")


def test_judge_context_enters_the_resume_key_only_when_set():
    plain = JudgeConfig(rubric="grounded").key_fields()
    assert "context" not in plain, "runs made before the option keep their judge verdicts"
    assert JudgeConfig(rubric="grounded", context="{{ reference }}").key_fields()["context"] == "{{ reference }}"


def test_recipe_refuses_a_judge_context_no_step_writes(project):
    path = project(stages=[{"stage": "judge", "rubric": "grounded", "context": "{{ chunk_text }}", "backend": {"kind": "scripted"}}])
    with pytest.raises(DatagenError, match="step 'judge' reads the column 'chunk_text', which no earlier step writes"):
        load_recipe(path)


# --- through a run -------------------------------------------------------------------------------


def test_a_run_writes_weights_ranks_top_k_and_the_card_reports_them(project):
    verdicts = [json.dumps(JUDGE_SCORES), json.dumps(JUDGE_SCORES | {"supported": 2}), json.dumps(JUDGE_SCORES | {"fluent": 5})]
    judge = {"stage": "judge", "name": "grounding", "rubric": "grounded", "context": "{{ topic }}", "backend": {"kind": "scripted", "responses": verdicts}}
    mix = {"weight": "(3 * grounding_supported + 2 * grounding_relevant + grounding_fluent) / 30", "per": ["topic"], "top_k": 1}
    path = project(stages=[judge], output={"mix": mix})
    out = project.root / "out"
    result = run_pipeline(load_recipe(path), out, progress=False)
    judged = pl.read_parquet(out / "run" / "stages" / "01_grounding" / "*.parquet")
    expected = judged.with_columns(((3 * pl.col("grounding_supported") + 2 * pl.col("grounding_relevant") + pl.col("grounding_fluent")) / 30).alias("w"))
    best = expected.group_by("topic").agg(pl.col("w").max()).sort("topic")
    ds = datasets.load_dataset(str(out), split="train")
    assert result.rows_written == ds.num_rows == best.height
    written = sorted(zip(ds["topic"], ds["weight"], ds["rank"], ds["origin"]))
    assert [(t, r, o) for t, _, r, o in written] == [(t, 1, "synthetic") for t in best["topic"]]
    assert [w for _, w, _, _ in written] == pytest.approx(best["w"].to_list())
    card = (out / "README.md").read_text()
    assert "## Mix" in card and f"Top 1 per group: {best.height} of {judged.height} rows kept" in card
    assert re.search(r"\| weight \| %d \| 0 \|" % best.height, card) and "| grounding_supported |" in card


# --- the shipped grounded_qa recipe, on scripted models ------------------------------------------

EXAMPLES = PIPELINES / "examples"
QUESTIONS = [
    "How long is a label_url valid after I buy a label?",
    "Why does my webhook signature never match when I parse the JSON first?",
    "What is the rate limit for creating labels in live mode?",
    "Can I put my secret key in our React checkout page?",
    "How do I get the next page of GET /v2/labels?",
    "Which label format should I use for a Zebra thermal printer?",
]
VERDICT = {"rationale": "The answer restates the retry schedule from the excerpt.", "supported": 4, "relevant": 3, "fluent": 5}


def test_grounded_qa_wires_tickets_docs_restyle_judge_and_the_mix(tmp_path):
    overrides = [
        "templates.0.count=6",
        "backend.kind=scripted",
        f"backend.responses={json.dumps(QUESTIONS)}",
        "stages.grounding.backend.kind=scripted",
        f"stages.grounding.backend.responses={json.dumps([json.dumps(VERDICT)])}",
    ]
    loaded = load_recipe(PIPELINES / "grounded_qa.yaml", overrides)
    result = run_pipeline(loaded, tmp_path / "out", progress=False)
    ds = datasets.load_dataset(str(tmp_path / "out"), split="train")
    rows = ds.to_list()
    synthetic = [r for r in rows if r["origin"] == "synthetic"]
    real = [r for r in rows if r["origin"] == "real"]
    assert synthetic and len(synthetic) + len(real) == len(rows) == result.rows_written
    tickets = {t["id"]: t for t in map(json.loads, (EXAMPLES / "tickets.jsonl").read_text().splitlines())}
    docs = {p.name: p.read_text() for p in (EXAMPLES / "api_docs").glob("*.md")}
    for row in synthetic:
        ticket_ids = [s.removeprefix("tickets:") for s in row["source_ids"] if s.startswith("tickets:")]
        [doc_id] = [s.removeprefix("docs:") for s in row["source_ids"] if s.startswith("docs:")]
        assert len(ticket_ids) == 2 and set(ticket_ids) <= set(tickets), "two real tickets as examples"
        assert row["reference"] in docs[doc_id.split("#")[0]], "the chunk is the prompt's reference"
        assert row["reference"] in row["messages"][1]["content"], "the answer was asked from the chunk"
        assert row["tone"] in {"polite", "frustrated", "terse"} and row["temperature"] in {0.5, 0.8, 1.0}
        assert row["weight"] == pytest.approx((3 * 4 + 2 * 3 + 5) / 30)
    # a quarter of the mix is real: round(0.25 * S / 0.75) tickets with an answer
    assert len(real) == round(len(synthetic) / 3) and len(real) > 0
    for row in real:
        [source_id] = row["source_ids"]
        ticket = tickets[source_id.removeprefix("tickets:")]
        assert [m["content"] for m in row["messages"][1:]] == [f"{ticket['subject']}\n\n{ticket['body']}", ticket["answer"]]
        assert row["weight"] == pytest.approx(23 / 30)
    by_type: dict[str, list[int]] = {}
    for row in synthetic:
        by_type.setdefault(json.loads(row["slots"])["question_type"], []).append(row["rank"])
    assert all(sorted(ranks) == list(range(1, len(ranks) + 1)) for ranks in by_type.values())
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"- Rows by origin: synthetic {len(synthetic)}, real {len(real)}" in card


def test_a_formula_column_the_rows_lack_stops_the_build_with_one_line_and_a_fix_reruns_nothing(project):
    out = project.root / "out"
    path = project(output={"mix": {"weight": "completion_tokens / max_tokens"}})
    first = datagen_in_process("run", path, "--out", out, "--progress", "none")
    assert first.returncode == 2 and first.stdout == ""
    [line] = first.stderr.strip().splitlines()
    assert line.startswith(f"datagen: error: {path}: output.mix.weight: ") and "reads the column 'max_tokens', which the rows do not have" in line
    stages = sorted((out / "run" / "stages").rglob("*.parquet"))
    assert stages and not (out / "data").exists(), "the stages are kept, no dataset is written"
    before = {p: p.stat().st_mtime_ns for p in stages}
    project(output={"mix": {"weight": "completion_tokens / 50", "top_k": 3}})
    second = datagen_in_process("run", path, "--out", out, "--progress", "none")
    assert second.returncode == 0, second.stderr
    assert {p: p.stat().st_mtime_ns for p in stages} == before, "only the output is rebuilt"
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows == 3 and ds["rank"] == [1, 2, 3] and ds["weight"] == sorted(ds["weight"], reverse=True)

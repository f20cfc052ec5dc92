"""The run report (OUT/run/report.html), `datagen inspect` and the progress output."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import polars as pl
import pytest

from helpers import TINY_TEMPLATE, datagen_cli, write_yaml
from datagen.cli import main
from datagen.run.executor import run_pipeline
from datagen.run.stats import summarize
from datagen.run.progress import StageProgress
from datagen.recipe import load_recipe
from datagen.report.html import build_report
from datagen.report.view import load_run

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)> so the answer is \\boxed{12}."
HOSTILE_PERSONA = "calm</title><svg onload=alert(3)>"
TERMINAL_ESCAPES = "\x1b[2J\x1b]0;pwned\x07 The total is 12, as counted twice."
RESPONSES = [
    "Adding the parts gives 12, so the total is \\boxed{12}.",
    "I carried a one too many and got \\boxed{13}.",
    HOSTILE,
    TERMINAL_ESCAPES,
    "short",
    "one two three four five six seven eight nine ten eleven twelve thirteen",  # cut by max_tokens
]
ARITH = {
    "id": "arith",
    "system": "You are {{ persona }}.",
    "user": "{{ problem.question }} Put the final answer in \\boxed{}.",
    "reference": "{{ problem.answer }}",
    "expansion": {"mode": "product"},
    "slots": {
        "persona": ["a careful counter", HOSTILE_PERSONA],
        "problem": [
            {"id": "five_plus_seven", "question": "What is 5 + 7?", "answer": "12"},
            {"id": "six_plus_seven", "question": "What is 6 + 7?", "answer": "13"},
        ],
    },
}
GOOD = json.dumps({"rationale": "clear and right", "helpfulness": 5, "correctness": 4, "instruction_following": 4, "clarity": 5})
POOR = json.dumps({"rationale": "<b>unhelpful</b>", "helpfulness": 1, "correctness": 2, "instruction_following": 1, "clarity": 2})


def _recipe(root, stages, **fields):
    write_yaml(root / "templates" / "tiny.yaml", TINY_TEMPLATE)
    write_yaml(root / "templates" / "arith.yaml", ARITH)
    data = {
        "name": "report-test",
        "seed": 3,
        "templates": [{"name": "arith"}, {"name": "tiny", "count": 4}],
        "backend": {"kind": "scripted", "responses": RESPONSES, "sampling": {"n": 4, "max_tokens": 12}},
        "stages": stages,
        "execution": {"shard_size": 3},
    } | fields
    return write_yaml(root / "pipelines" / "recipe.yaml", data)


FULL_STAGES = [
    {"stage": "finished"},
    {"stage": "length", "min_chars": 10},
    {"stage": "vote", "templates": ["arith"], "ks": [1, 2, 4]},
    {"stage": "verify", "verifiers": {"arith": {"kind": "math"}, "*": {"kind": "none"}}},
    {"stage": "collapse", "max_collapse_rate": None},
    {"stage": "judge", "rubric": "helpfulness", "min_score": 3, "backend": {"kind": "scripted", "responses": [GOOD, POOR]}},
    {"stage": "dedup"},
]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Every filter that summarizes, through the executor with the scripted backend; progress as log lines."""
    root = tmp_path_factory.mktemp("full")
    out = root / "out"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        run_pipeline(load_recipe(_recipe(root, FULL_STAGES)), out, progress="log")
    return out, log.getvalue()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Two filters, run by the installed command with stderr a pipe (not a terminal)."""
    root = tmp_path_factory.mktemp("cli")
    out = root / "out"
    done = datagen_cli("run", _recipe(root, FULL_STAGES[:2]), "--out", out, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    """Preference pairs: verified answers chosen over failed ones."""
    root = tmp_path_factory.mktemp("dpo")
    out = root / "out"
    path = _recipe(root, [FULL_STAGES[0], FULL_STAGES[3]], output={"format": "dpo", "pairs": {"strategy": "verified"}})
    run_pipeline(load_recipe(path), out, progress=False)
    return out


def _funnel_rows(html: str) -> dict[str, dict[str, int]]:
    rows = re.findall(r'<tr data-stage="([^"]+)" data-rows-in="(\d+)" data-kept="(\d+)" data-dropped="(\d+)">(.*?)</tr>', html)
    return {label: {"rows_in": int(a), "kept": int(b), "dropped": int(c), "html": cells} for label, a, b, c, cells in rows}


def _sections(html: str) -> set[str]:
    return set(re.findall(r'<section id="([a-z]+)">', html))


# --- the report ----------------------------------------------------------------------------------


def test_report_funnel_matches_the_manifest_and_the_shards(full_run):
    out, _ = full_run
    html = (out / "run" / "report.html").read_text()
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    labels = sorted(manifest["stages"], key=lambda label: manifest["stages"][label]["index"])
    assert labels == ["generate", "finished", "length", "vote", "verify", "collapse", "judge", "dedup"]
    funnel = _funnel_rows(html)
    assert list(funnel) == labels
    final = pl.read_parquet(out / "run" / "stages" / "07_dedup" / "*.parquet")
    for label in labels:
        shards = manifest["stages"][label]["shards"].values()
        reasons: dict[str, int] = {}
        for shard in shards:
            for reason, count in shard["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + count
        row = funnel[label]
        assert row["rows_in"] == sum(s["rows_in"] for s in shards) and row["kept"] == sum(s["kept"] for s in shards)
        assert row["dropped"] == sum(reasons.values()) == final.filter(pl.col("dropped_by") == label).height
        for reason, count in reasons.items():
            assert f"{reason}: {count}" in row["html"]
    assert funnel["generate"]["rows_in"] == manifest["prompts"] == 8 and funnel["generate"]["kept"] == final.height == 32
    assert funnel["dedup"]["kept"] == manifest["rows_written"] == final["keep"].sum()
    # every stage dropped something here except vote (which only annotates), so every chart has data
    assert all(funnel[label]["dropped"] for label in labels if label not in ("generate", "vote", "collapse"))


def test_report_shows_each_stage_kind_and_leaves_out_what_has_no_data(full_run):
    out, _ = full_run
    html = (out / "run" / "report.html").read_text()
    assert _sections(html) == {"overview", "trust", "funnel", "output", "tokens", "judge", "verify", "vote", "lengths", "diversity", "samples"}
    assert html.count('<svg class="plot"') >= 9
    view = load_run(out)
    [judge] = [s for s in view.stages if s["stage"] == "judge"]
    assert f"mean score {judge['summary']['score_mean']} over {judge['summary']['scored']} scored of {judge['summary']['judged']} judged" in html
    [vote] = [s for s in view.stages if s["stage"] == "vote"]
    for k, rate in vote["summary"]["pass_at_k"].items():
        assert f"{k}: {rate:.1%}" in html  # the bar's tooltip


def test_report_escapes_model_output_and_template_values(full_run):
    out, _ = full_run
    html = (out / "run" / "report.html").read_text()
    rows = pl.read_parquet(out / "run" / "stages" / "07_dedup" / "*.parquet")
    assert rows.filter(pl.col("completion") == HOSTILE).height and rows.filter(pl.col("persona") == HOSTILE_PERSONA).height
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in html, "the hostile completion is shown as text"
    assert "calm&lt;/title&gt;&lt;svg onload=alert(3)&gt;" in html, "the hostile persona is shown as text"
    assert "<script" not in html.lower() and "<img" not in html.lower() and "<svg onload" not in html.lower()
    assert "&lt;b&gt;unhelpful&lt;/b&gt;" in html and "<b>unhelpful" not in html


@pytest.mark.slow  # the installed CLI in a subprocess (cli_run)
def test_sections_appear_with_dpo_pairs_and_counterexample_clusters(cli_run, dpo_run):
    view = load_run(cli_run[0])
    html = build_report(view)
    assert _sections(html) == {"overview", "trust", "funnel", "output", "tokens", "lengths", "samples"}
    assert "chosen vs rejected" not in html

    html = (dpo_run / "run" / "report.html").read_text()
    pairs = pl.read_parquet(dpo_run / "data" / "*.parquet")
    manifest = json.loads((dpo_run / "run" / "manifest.json").read_text())
    assert pairs.height == manifest["output"]["pairs"] > 0
    assert {"output", "lengths", "pairs"} <= _sections(html)
    longer = (pairs["chosen"].list.last().struct.field("content").str.len_chars() > pairs["rejected"].list.last().struct.field("content").str.len_chars()).mean()
    assert "chosen vs rejected" in html and f"{longer:.1%} of pairs" in html
    assert f"{pairs.height} (dpo): pairs from {manifest['output']['prompts_with_pairs']} of {manifest['output']['prompts']} prompts" in html

    # Counterexample clusters: the counterexample step's section, found by the step's kind
    clusters = [{"cluster": "c0", "size": 12, "budget": 30, "severity": 0.9}, {"cluster": "c1", "size": 5, "budget": 8, "severity": 0.4}]
    stages = [dict(s) for s in view.stages]
    stages[-1] |= {"kind": "counterexample", "summary": {"clusters": clusters}}
    html = build_report(dataclasses.replace(view, stages=stages))
    assert "clusters" in _sections(html) and "other" not in _sections(html)
    assert "c0 \u2014 size: 12" in html and "c0 \u2014 budget: 30" in html and "c1 \u2014 budget: 8" in html

    stages[-1] |= {"kind": "novel", "summary": {"new_figure": "<i>42</i>"}}  # a step kind without a section of its own
    html = build_report(dataclasses.replace(view, stages=stages))
    assert "other" in _sections(html) and "&lt;i&gt;42&lt;/i&gt;" in html


# --- progress ------------------------------------------------------------------------------------


@pytest.mark.slow  # the installed CLI in a subprocess (cli_run)
def test_progress_off_a_terminal_is_plain_lines(full_run, cli_run):
    start = re.compile(r"^\[(\d)/(\d)\] (\w+): (\d+) (prompt|row)s to do$")
    end = re.compile(r"^\[(\d)/(\d)\] (\w+): (\d+)/\4 (prompt|row)s, [\d.]+k? \5s/s(, [\d.]+k? tok/s)?, done in \d\d:\d\d$")
    for log, n_stages in ((full_run[1], 8), (cli_run[1].stderr, 3)):
        lines = [l for l in log.splitlines() if l.startswith("[")]
        assert "\r" not in log and "\x1b" not in log
        assert len(lines) == 2 * n_stages, lines
        assert all(start.match(a) and end.match(b) for a, b in zip(lines[::2], lines[1::2])), lines
        assert lines[0] == f"[1/{n_stages}] generate: 8 prompts to do" and "tok/s" in lines[1]


def test_progress_lines_give_rate_and_eta_and_bars_stay_on_terminals():
    stream = io.StringIO()
    with StageProgress("generate", "[1/3]", 10, "prompt", True, stream=stream, interval=0) as progress:
        progress.update(4, tokens=400)
        progress.update(6, tokens=600)
    started, first, last = stream.getvalue().splitlines()
    assert started == "[1/3] generate: 10 prompts to do"
    assert re.fullmatch(r"\[1/3\] generate: 4/10 prompts, \S+ prompts/s, \S+ tok/s, ETA \d\d:\d\d", first)
    assert last.startswith("[1/3] generate: 10/10 prompts") and "done in" in last

    quiet = io.StringIO()
    with StageProgress("verify", "[2/3]", 10, "row", "log", stream=quiet) as progress:
        progress.update(5)  # within the interval: no line until the stage ends
        assert quiet.getvalue() == "[2/3] verify: 10 rows to do\n"
    assert quiet.getvalue().count("\n") == 2 and "5/10 rows" in quiet.getvalue()
    resumed = io.StringIO()
    with StageProgress("verify", "[2/3]", 0, "row", "log", stream=resumed):
        pass
    assert resumed.getvalue() == "[2/3] verify: nothing to do (finished earlier)\n"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = Terminal()
    with StageProgress("verify", "[2/3]", 10, "row", "auto", stream=bar) as progress:
        progress.update(10)
    assert "\r" in bar.getvalue() and "100%" in bar.getvalue()
    silent = io.StringIO()
    with StageProgress("verify", "[2/3]", 10, "row", False, stream=silent) as progress:
        progress.update(10)
    assert silent.getvalue() == ""


# --- datagen inspect -----------------------------------------------------------------------------


@pytest.mark.slow  # the installed CLI in a subprocess (cli_run)
def test_inspect_prints_the_funnel_and_the_rows_a_stage_dropped(cli_run):
    out, done = cli_run
    assert f"report: {out / 'run' / 'report.html'}" in done.stdout
    stats = {s["stage"]: s for s in summarize(json.loads((out / "run" / "manifest.json").read_text()), ["generate", "finished", "length"])}
    shown = datagen_cli("inspect", out)
    assert shown.returncode == 0, shown.stderr
    for label, s in stats.items():
        dropped = sum(s["dropped"].values())
        assert re.search(rf"^\| {label} +\| +{s['rows_in']} \| +{s['kept']} \| +{dropped} \|", shown.stdout, re.M), shown.stdout
    assert f"too_short: {stats['length']['dropped']['too_short']}" in shown.stdout
    assert "report.html" in shown.stdout

    truncated = stats["finished"]["dropped"]["truncated"]
    assert truncated > 2
    rows = datagen_cli("inspect", out, "--where", "stage=finished", "--rows", "2")
    assert rows.returncode == 0, rows.stderr
    assert f"where stage=finished: {truncated} rows, showing 2" in rows.stdout
    assert rows.stdout.count("[dropped by finished: truncated]") == 2 and rows.stdout.count("completion: one two three") == 2

    missing = datagen_cli("inspect", out / "nope")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such directory" in missing.stderr


def test_inspect_filters_columns_and_keeps_escapes_off_the_terminal(full_run, capsys):
    out, _ = full_run
    rows = pl.read_parquet(out / "run" / "stages" / "07_dedup" / "*.parquet")
    duplicates = rows.filter(pl.col("dropped_by") == "dedup").height
    assert main(["inspect", str(out), "--where", "stage=dedup", "--rows", "50"]) == 0
    text = capsys.readouterr().out
    assert f"where stage=dedup: {duplicates} rows, showing {duplicates}" in text
    assert text.count("[dropped by dedup: exact_duplicate]") == duplicates and "[kept]" not in text

    arith = rows.filter(pl.col("template_id") == "arith")
    assert arith.filter(pl.col("completion") == TERMINAL_ESCAPES).height
    assert main(["inspect", str(out), "--where", "template_id=arith", "--rows", "100"]) == 0
    text = capsys.readouterr().out
    assert f"where template_id=arith: {arith.height} rows, showing {arith.height}" in text
    assert "\x1b" not in text and "\x07" not in text and "\ufffd[2J" in text, "terminal escapes are neutralized"

    assert main(["inspect", str(out), "--where", "stage=nope"]) == 2
    assert main(["inspect", str(out), "--where", "sample_index=two"]) == 2
    err = capsys.readouterr().err
    assert "no stage 'nope' in this run (stages: generate, finished" in err and "'two' is not a value of column 'sample_index'" in err


@pytest.mark.slow  # the installed CLI in a subprocess (cli_run)
def test_inspect_reads_a_plain_dataset(cli_run, tmp_path, capsys):
    out, _ = cli_run
    shutil.copytree(out / "data", tmp_path / "data")
    shutil.copy(out / "README.md", tmp_path / "README.md")
    kept = pl.read_parquet(out / "data" / "*.parquet")
    assert main(["inspect", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"rows: {kept.height}" in text and "| finished |" in text, "the card's table of rows through the stages"
    assert main(["inspect", str(tmp_path), "--rows", "1", "--where", "template_id=tiny"]) == 0
    assert "[assistant]" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path), "--where", "stage=length"]) == 2
    assert "holds only the kept rows" in capsys.readouterr().err


# --- in a real browser ---------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        # What .ci/run does: Debian's package, only where it is missing and we may install it.
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
                       shell=True, capture_output=True, timeout=600, check=False)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and could not be installed (apt-get install chromium)")
    return found


def _render(chromium: str, page, tmp_path) -> tuple[str, list[str], np.ndarray]:
    """The DOM after load, the console messages and the screenshot (RGB array) of a page."""
    from PIL import Image

    shot = tmp_path / f"{page.stem}.png"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--window-size=1200,2000", f"--screenshot={shot}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console, np.asarray(Image.open(shot).convert("RGB"))


def _ink(pixels: np.ndarray) -> float:
    """Share of the screenshot that is not page background."""
    return float((pixels.min(axis=2) < 235).mean())


@pytest.mark.browser
@pytest.mark.slow
def test_report_renders_in_a_headless_browser(full_run, tmp_path):
    chromium = _chromium()
    out, _ = full_run
    report = out / "run" / "report.html"

    # The checks themselves: a page with a script error is caught, an empty page has no ink.
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><p>x</p><script>console.error('seen'); missing();</script>")
    empty = tmp_path / "empty.html"
    empty.write_text("<!doctype html><html><body></body></html>")
    _, console, _ = _render(chromium, broken, tmp_path)
    assert any("Uncaught ReferenceError" in line for line in console) and any("seen" in line for line in console)
    _, console, pixels = _render(chromium, empty, tmp_path)
    assert not console and _ink(pixels) < 0.001

    dom, console, pixels = _render(chromium, report, tmp_path)
    assert console == [], console
    source = report.read_text()
    assert dom.count('<svg class="plot"') == source.count('<svg class="plot"') >= 9, "every plot is in the DOM"
    assert dom.count("<rect ") >= 40 and "<script" not in dom.lower()
    assert re.findall(r'<section id="([a-z]+)">', dom) == re.findall(r'<section id="([a-z]+)">', source)
    assert _ink(pixels) > 0.05, "the screenshot shows a page with content"
    assert pixels[:60].mean() < 120, "the dark header band is drawn"


# --- trust: model steps ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def same_score_run(tmp_path_factory):
    """A judge that gives every candidate the same verdict, and one that only loops."""
    root = tmp_path_factory.mktemp("trust")
    out = root / "out"
    looping = json.dumps({"rationale": "the response is a reference to the response " * 6, "helpfulness": 3, "correctness": 3,
                          "instruction_following": 3, "clarity": 3})
    stages = [
        {"stage": "finished"},
        {"stage": "judge", "rubric": "helpfulness", "backend": {"kind": "scripted", "responses": [GOOD]}},
        {"stage": "judge", "name": "parrot", "rubric": "helpfulness", "backend": {"kind": "scripted", "responses": [looping, GOOD]}},
    ]
    run_pipeline(load_recipe(_recipe(root, stages)), out, progress=False)
    return out


def _trust_rows(html: str) -> list[tuple[str, str, str, str]]:
    body = re.search(r'<table class="trust">.*?</table>', html, re.S).group(0)
    return re.findall(r'<tr data-step="([^"]+)" data-flagged="(yes|no)"><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>', body)


def test_trust_flags_a_judge_giving_everyone_the_same_score_and_counts_degenerate_verdicts(same_score_run):
    html = (same_score_run / "run" / "report.html").read_text()
    rows = {(step, name): (flagged, value) for step, flagged, name, value in _trust_rows(html)}
    manifest = json.loads((same_score_run / "run" / "manifest.json").read_text())
    judge, parrot = manifest["stages"]["judge"]["summary"], manifest["stages"]["parrot"]["summary"]
    assert judge["distinct_scores"] == 1 and judge["errors"] == 0
    assert rows[("judge", "score spread")][0] == "yes", "one score for everyone is flagged"
    assert parrot["degenerate"] == parrot["errors"] > 0 and parrot["judged"] == judge["judged"]
    assert rows[("parrot", "degenerate verdicts")] == ("yes", f"{parrot['degenerate']} of {parrot['judged']} ({parrot['degenerate'] / parrot['judged']:.1%})")
    assert rows[("generate", "cut off at max_tokens")][0] in ("yes", "no")
    card = (same_score_run / "README.md").read_text()
    assert f"| parrot | {parrot['judged']} | {parrot['judged']} ({parrot['errors']} with an error, not passed) | 0 | - |" in card
    assert f"{parrot['errors']} kept with an error (on_error: keep)" in html
    assert "## Trust" in card and "| judge | score spread |" in card and "**the judge gives (nearly) everyone the same score**" in card
    # a looping verdict is never shown as kept
    parrot_rows = pl.read_parquet(same_score_run / "run" / "stages" / "03_parrot" / "*.parquet").filter(pl.col("parrot_error").is_not_null())
    assert parrot_rows.height and parrot_rows["parrot_score"].is_null().all()
    samples = re.search(r'<section id="samples">.*?</section>', html, re.S).group(0)
    parrot_samples = samples.split("<h3>parrot</h3>")[1] if "<h3>parrot</h3>" in samples else ""
    shown = re.findall(r'<span class="tag (\w+)">([^<]*)</span>', parrot_samples)
    assert shown and all(tag == "error" and text.startswith("parrot_error (not dropped)") for tag, text in shown if "degenerate" in text)
    assert any(tag == "error" for tag, _ in shown) and not any(tag == "kept" and "degenerate" in text for tag, text in shown)


def test_trust_of_pairwise_order_agreement_and_length_bias():
    from datagen.report.trust import trust

    stats = [{"stage": "generate", "kept": 40, "dropped": {}, "rows_in": 10},
             {"stage": "judge", "kept": 40, "dropped": {}, "rows_in": 40, "summary": {
                 "mode": "pairwise", "rubric": "r", "comparisons": 30, "errors": 0, "consistency_rate": 0.5, "ties": 5,
                 "degenerate_verdicts": 0, "winner_longer_rate": 0.92}}]
    [(_, generate), (_, judge), (_, pairs)] = trust(stats, {"pairs": 20, "length_delta_chars": {"chosen_longer": 0.5}})
    figures = {name: (value, warning) for name, value, warning in judge}
    assert figures["agreement of the two orders"] == ("50.0% of 30", "verdicts often flip with the order of the answers")
    assert figures["the longer answer wins"][0] == "92.0% of 25" and "length bias" in figures["the longer answer wins"][1]
    assert pairs == [("chosen side is the longer one", "50.0% of 20", None)]


def test_degenerate_answers_count_against_the_model_step_that_wrote_them():
    from datagen.report.trust import trust

    # 4 questions written; a solve step answers each 4 times (16 rows); `finished` then drops 3 of
    # the 16 answers as cut off, and a collapse filter 2 as repetitive; earlier, length dropped one
    # question as empty.
    stats = [{"stage": "generate", "kind": "generate", "kept": 5, "dropped": {"generate_error": 1}, "rows_in": 6},
             {"stage": "min_question", "kind": "length", "kept": 4, "dropped": {"empty": 1}, "rows_in": 5},
             {"stage": "solve", "kind": "llm", "kept": 16, "dropped": {}, "rows_in": 4},
             {"stage": "finished", "kind": "finished", "kept": 13, "dropped": {"truncated": 3}, "rows_in": 16},
             {"stage": "collapse", "kind": "collapse", "kept": 11, "dropped": {"repetitive": 2}, "rows_in": 13}]
    sections = dict(trust(stats))
    assert sections["generate"] == [
        ("request errors", "1 of 6 (16.7%)", "many requests failed"),
        ("degenerate (repetitive or empty)", "1 of 5 (20.0%)", "the model often loops or says nothing"),
        ("cut off at max_tokens", "0 of 5 (0.0%)", None),
    ]
    assert [(name, value) for name, value, _ in sections["solve"]] == [
        ("degenerate (repetitive or empty)", "2 of 16 (12.5%)"), ("cut off at max_tokens", "3 of 16 (18.8%)")]


@pytest.mark.browser
@pytest.mark.slow
def test_trust_section_renders_in_a_headless_browser(same_score_run, tmp_path):
    chromium = _chromium()
    dom, console, pixels = _render(chromium, same_score_run / "run" / "report.html", tmp_path)
    assert console == [], console
    assert '<section id="trust">' in dom and "Trust: model steps" in dom
    rows = _trust_rows(dom)
    assert ("judge", "yes", "score spread") in [(s, f, n) for s, f, n, _ in rows]
    assert {s for s, _, _, _ in rows} == {"generate", "judge", "parrot"}
    assert _ink(pixels) > 0.05


def test_progress_counts_only_the_rows_still_alive(tmp_path):
    stages = [{"stage": "length", "min_chars": 40}, {"stage": "judge", "rubric": "helpfulness", "backend": {"kind": "scripted", "responses": [GOOD]}}]
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        result = run_pipeline(load_recipe(_recipe(tmp_path, stages)), tmp_path / "out", progress="log")
    [length] = [s for s in result.stage_stats if s["stage"] == "length"]
    assert 0 < length["kept"] < length["rows_in"]
    assert f"[3/3] judge: {length['kept']} rows to do" in log.getvalue(), log.getvalue()
    assert f"[2/3] length: {length['rows_in']} rows to do" in log.getvalue()

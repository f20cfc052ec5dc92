"""Each step kind's report section and card lines are found through its kind (datagen.report.sections),
whatever the step is named; the report and the card know no step kind themselves."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
import yaml

from helpers import BASE_RECIPE, TINY_TEMPLATE, write_yaml
from datagen.recipe import load_recipe
from datagen.report import sections
from datagen.report.html import build_report
from datagen.report.sections import SECTIONS, Section, kept_errors, section_for
from datagen.report.view import key_figures, load_run
from datagen.run.executor import run_pipeline
from datagen.steps import STEP_KINDS

GOOD = json.dumps({"rationale": "clear and right", "helpfulness": 5, "correctness": 4, "instruction_following": 4, "clarity": 5})


def _run(tmp_path, stages, **backend):
    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)
    data = BASE_RECIPE | {"stages": stages}
    if backend:
        data["backend"] = data["backend"] | backend
    path = write_yaml(tmp_path / "pipelines" / "recipe.yaml", data)
    out = tmp_path / "out"
    run_pipeline(load_recipe(path), out, progress=False)
    return out


def _section(html: str, key: str) -> str:
    found = re.search(rf'<section id="{key}">.*?</section>', html, re.S)
    return found.group(0) if found else ""


def _stage_rows(out, label):
    [folder] = [p for p in (out / "run" / "stages").iterdir() if p.name.endswith("_" + label)]
    return pl.read_parquet(sorted(folder.glob("*.parquet")))


def test_every_section_is_keyed_by_a_step_kind():
    assert set(SECTIONS) <= set(STEP_KINDS), "a section under a name no step kind has is never used"
    for kind, section in SECTIONS.items():
        assert isinstance(section, Section) and re.fullmatch(r"[a-z]+", section.key), kind
    # an unknown kind (or a run recorded before kinds were) falls back to the generic section, or to its label
    assert section_for({"stage": "x", "kind": "novel"}) is sections.GENERIC
    assert section_for({"stage": "judge"}) is SECTIONS["judge"]


def test_a_renamed_judge_is_shown_by_the_judge_section_and_its_kept_errors_counted(tmp_path):
    stages = [
        {"stage": "finished"},
        # named so that neither the label nor the summary's shape says "judge": only the kind does
        {"stage": "judge", "name": "grader", "rubric": "helpfulness", "on_error": "keep",
         "backend": {"kind": "scripted", "responses": [GOOD, "no verdict here"]}},
    ]
    out = _run(tmp_path, stages)
    view = load_run(out)
    [grader] = [s for s in view.stages if s["stage"] == "grader"]
    assert grader["kind"] == "judge"
    rows = _stage_rows(out, "grader")
    judged = rows.filter(pl.col("grader_keep").is_not_null())
    errors = judged.filter(pl.col("grader_error").is_not_null()).height
    assert 0 < errors < judged.height, "the scripted judge answers some rows with no verdict"
    # on_error: keep: the rows with an error are alive, none of them dropped for it
    assert judged.filter(pl.col("grader_error").is_not_null())["grader_keep"].all()
    assert kept_errors(grader) == errors

    html = (out / "run" / "report.html").read_text()
    judge = _section(html, "judge")
    assert "<h3>grader (rubric helpfulness, pointwise)</h3>" in judge and judge.count('<svg class="plot"') == 2
    assert '<section id="other">' not in html
    assert f"{errors} kept with an error" in _section(html, "funnel")
    trust = _section(html, "trust")
    assert 'data-step="grader"' in trust and "errors (no score)" in trust
    headline = dict(key_figures(view))["grader"]
    scored = judged.filter(pl.col("grader_error").is_null())
    assert 0 < scored.height < judged.height, "the run has rows the judge did not score"
    assert headline.startswith(f"mean score {round(scored['grader_score'].mean(), 3)} over {scored.height} scored of {judged.height} judged")

    card = (out / "README.md").read_text()
    assert f"| grader | {judged.height} | {judged.height} ({errors} with an error, not passed) |" in card
    block = card.split("### grader\n\n```yaml\n", 1)[1]
    assert yaml.safe_load(block.split("```", 1)[0])["judged"] == judged.height, "the summary as YAML right under the heading"
    assert block.split("```", 1)[1].split("\n\n")[1].strip() == headline, "then the section's headline"


def test_converse_summary_report_and_card(tmp_path):
    # "" is an empty user or assistant message: that conversation fails (generate_error)
    backend = {"kind": "scripted", "responses": ["tell me more about that", "", "sure, here is more", "why is that so"],
               "sampling": {"n": 1, "max_tokens": 20}}
    out = _run(tmp_path, [{"stage": "converse", "name": "talk", "turns": 3, "backend": backend}],
               sampling={"n": 2, "max_tokens": 20})
    rows = _stage_rows(out, "talk")
    failed = rows.filter(~pl.col("talk_keep"))
    finished = rows.filter(pl.col("talk_keep"))
    assert rows.height == 12 and failed.height and finished.height, "some conversations fail, some finish"
    assert (finished["talk_turns"] == 3).all()
    # every finished conversation holds its 3 user turns and their answers
    assert all([m["role"] for m in ms if m["role"] != "system"].count("user") == 3 for ms in finished["messages"].to_list())

    view = load_run(out)
    [talk] = [s for s in view.stages if s["stage"] == "talk"]
    summary = talk["summary"]
    assert talk["kind"] == "converse"
    assert summary["conversations"] == 12 and summary["finished"] == finished.height and summary["errors"] == failed.height
    assert summary["turns"] == {"3": finished.height}
    assert summary["tokens"] == int(rows["talk_tokens"].sum()) > 0
    assert sum(summary["error_kinds"].values()) == failed.height and all(k.startswith("empty ") for k in summary["error_kinds"])

    html = (out / "run" / "report.html").read_text()
    chains = _section(html, "chains")
    assert "<h3>talk (conversations)</h3>" in chains and f"<dt>finished</dt><dd>{finished.height}</dd>" in chains
    assert "failed conversations" in _section(html, "trust")
    card = (out / "README.md").read_text()
    assert f"{finished.height} of 12 conversations finished (3 turns: {finished.height}), {failed.height} failed" in card


def test_a_kind_without_a_section_is_shown_as_it_is_and_escaped(tmp_path):
    out = _run(tmp_path, [{"stage": "finished"}])
    view = load_run(out)
    stages = [dict(s) for s in view.stages]
    stages[-1] |= {"kind": "novel", "summary": {"figure": "<b>7</b>"}}
    html = build_report(view.__class__(**{**view.__dict__, "stages": stages}))
    other = _section(html, "other")
    assert "&lt;b&gt;7&lt;/b&gt;" in other and "<b>7" not in html
    lines = sections.GENERIC.card_lines("finished", {"figure": "<b>7</b>"})
    assert lines[1] == "### finished" and "figure: <b>7</b>" in lines


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_each_section_takes_an_empty_summary(kind, tmp_path):
    """A summary missing figures (an older run, a step that saw no row) still renders."""
    out = _run(tmp_path, [{"stage": "finished"}])
    view = load_run(out)
    section = SECTIONS[kind]
    assert isinstance(section.html("step", {}, view), str)
    assert isinstance(section.headline({}), str) and isinstance(section.trust({}), list)
    assert section.kept_errors({"stage": "step", "dropped": {}, "summary": {}}) == 0


def test_a_new_kind_s_section_is_found_through_the_registry_alone(tmp_path, monkeypatch):
    """A kind's section module plus its SECTIONS line is all the report, overview and trust need."""
    from datagen.report.trust import trust

    class NovelSection(Section):
        key, title = "novel", "Novel step figures"

        def headline(self, s):
            return f"{s['made']} made"

        def html(self, label, s, view):
            return f"<h3>{label}</h3><p>made {s['made']}</p>"

        def trust(self, s):
            return [("made", str(s["made"]), "too many" if s["made"] > 3 else None)]

    monkeypatch.setitem(SECTIONS, "novel", NovelSection())
    out = _run(tmp_path, [{"stage": "finished"}])
    view = load_run(out)
    stages = [dict(s) for s in view.stages]
    stages[-1] |= {"kind": "novel", "summary": {"made": 5}}
    view = view.__class__(**{**view.__dict__, "stages": stages})
    html = build_report(view)
    assert "<h3>finished</h3><p>made 5</p>" in _section(html, "novel") and "Novel step figures" in html
    assert ("finished", "5 made") in key_figures(view)
    assert ("finished", [("made", "5", "too many")]) in trust(stages)
    assert SECTIONS["novel"].card_lines("finished", {"made": 5}) == ["", "### finished", "", "```yaml", "made: 5", "```", "", "5 made"]

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from helpers import PIPELINES, TEMPLATES, TINY_TEMPLATE, write_yaml
from datagen.errors import DatagenError
from datagen.sources.templates import _all_combinations, expand, load_template, select_combinations


def tiny(tmp_path: Path, **changes) -> Path:
    data = {**TINY_TEMPLATE, **changes}
    return write_yaml(tmp_path / f"{data['id']}.yaml", data)


def test_same_seed_same_prompts_and_other_seed_differs(tmp_path):
    template = load_template(tiny(tmp_path))
    first = expand(template, 10, seed=3)
    again = expand(load_template(tiny(tmp_path)), 10, seed=3)
    other = expand(template, 10, seed=4)
    assert first == again
    assert [r["prompt_id"] for r in first] != [r["prompt_id"] for r in other]
    assert len({r["prompt_id"] for r in first}) == 10, "sampling is without replacement"


def test_rendering_fills_slots_and_provenance(tmp_path):
    row = expand(load_template(tiny(tmp_path)), 1, seed=1)[0]
    system, user = row["messages"]
    assert system["role"] == "system" and system["content"].startswith("You are a ")
    assert row["persona"] in TINY_TEMPLATE["slots"]["persona"]
    assert row["topic"] in user["content"] and row["difficulty"] in user["content"]
    assert row["template_id"] == "tiny" and row["seed"] == 1


def test_product_mode_enumerates_every_combination(tmp_path):
    template = load_template(tiny(tmp_path, expansion={"mode": "product"}))
    rows = expand(template, None, seed=0)
    assert len(rows) == 3 * 2 * 4
    assert len({r["prompt_id"] for r in rows}) == 24


def test_where_filters_combinations(tmp_path):
    template = load_template(tiny(tmp_path, where="difficulty == 'hard' or topic == 'stars'", expansion={"mode": "product"}))
    rows = expand(template, None, seed=0)
    assert len(rows) == 3 * 4 + 3 * 1
    assert all(r["difficulty"] == "hard" or r["topic"] == "stars" for r in rows)


def test_weights_bias_the_sample(tmp_path):
    big = {"id": "big", "user": "{{ a }} {{ b }}", "slots": {"a": [f"a{i}" for i in range(40)], "b": ["x", "y"]},
           "expansion": {"weights": {"b": {"y": 9}}}}
    template = load_template(write_yaml(tmp_path / "big.yaml", big))
    picks = Counter(c["b"] for c in select_combinations(template, 20, seed=5))
    assert picks["y"] >= 14, picks


def test_mapping_values_use_their_id_for_provenance(tmp_path):
    path = tiny(tmp_path, user="{{ topic.text }} ({{ difficulty }}) {{ persona }}",
                slots={**TINY_TEMPLATE["slots"], "topic": [{"id": "r", "text": "Rivers"}, {"id": "v", "text": "Volcanoes"}]},
                system=None)
    rows = expand(load_template(path), 4, seed=0)
    assert {r["topic"] for r in rows} <= {"r", "v"}
    assert any("Rivers" in r["messages"][0]["content"] or "Volcanoes" in r["messages"][0]["content"] for r in rows)


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"user": "Hi {{ colour }}"}, "user", "unknown slot 'colour'"),
        ({"user": "Hi {{ topic "}, "user", "template syntax error"),
        ({"slots": {**TINY_TEMPLATE["slots"], "topic": []}}, "slots.topic", "empty vocabulary"),
        ({"slots": {**TINY_TEMPLATE["slots"], "unused": ["x"]}}, "slots.unused", "never used"),
        ({"slots": {**TINY_TEMPLATE["slots"], "topic": ["a", "a"]}}, "slots.topic[1]", "duplicate"),
        ({"slots": {**TINY_TEMPLATE["slots"], "topic": [{"text": "no id"}]}}, "slots.topic[0]", "needs an 'id'"),
        ({"where": "difficulty == "}, "where", "syntax error"),
        ({"expansion": {"weights": {"topic": {"oceans": 2}}}}, "expansion.weights.topic", "unknown value"),
        ({"extra_field": 1}, "extra_field", "unknown field"),
        ({"id": "other"}, "id", "does not match the file name"),
    ],
)
def test_bad_templates_name_file_and_field(tmp_path, changes, field, message):
    data = {**TINY_TEMPLATE, **changes}
    path = write_yaml(tmp_path / "tiny.yaml", data)
    with pytest.raises(DatagenError) as info:
        load_template(path)
    assert info.value.field == field
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_sandbox_refuses_attribute_escape(tmp_path):
    path = tiny(tmp_path, user="{{ topic.__class__.__mro__[1].__subclasses__() }} {{ difficulty }} {{ persona }}")
    template = load_template(path)
    with pytest.raises(DatagenError) as info:
        expand(template, 1, seed=0)
    assert info.value.field == "user" and "unsafe" in str(info.value)


def test_impossible_count_is_an_error(tmp_path):
    with pytest.raises(DatagenError, match="exceeds the 24 distinct"):
        expand(load_template(tiny(tmp_path)), 25, seed=0)


def test_sample_mode_needs_a_count(tmp_path):
    with pytest.raises(DatagenError, match="needs a count"):
        expand(load_template(tiny(tmp_path)), None, seed=0)


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_templates_render_every_combination(path):
    template = load_template(path)
    if path.stem in ("math_word_problems", "python_functions", "assistant_requests"):
        assert len(template.spec.slots["persona"]) >= 6
        assert len(template.spec.slots["difficulty"]) >= 3
    every = len(_all_combinations(template))
    sources = {}
    if template.sources:  # slots drawn from data: rendered with the sources of the shipped recipe that uses it
        from datagen.recipe import load_recipe

        users = [p for p in sorted(PIPELINES.glob("*.yaml")) if f"name: {path.stem}" in p.read_text(encoding="utf-8")]
        assert users, f"no shipped recipe uses {path.stem}, which draws slots from data sources"
        sources = load_recipe(users[0]).sources
    rows = expand(template, every, seed=0, sources=sources)
    assert len(rows) == every and all(r["messages"][-1]["content"] for r in rows)
    if template.sources:
        assert all(r["source_ids"] for r in rows)


def test_math_references_are_numbers_and_python_tests_pass():
    """Every math reference is a positive number (integer or fraction); every shipped Python task's
    reference solution passes its tests, and the tests reject a solution that returns nothing."""
    import ast
    from fractions import Fraction

    math = expand(load_template(TEMPLATES / "math_word_problems.yaml"), 20, seed=0)
    assert len(math) == 20
    for row in math:
        assert Fraction(row["reference"]) > 0, row["reference"]
    template = load_template(TEMPLATES / "python_functions.yaml")
    for task in template.spec.slots["task"]:
        namespace: dict = {}
        exec(task["solution"], namespace)  # shipped reference solutions, not model output
        exec(task["tests"], namespace)  # raises AssertionError if the solution failed
        names = [node.name for node in ast.parse(task["solution"]).body if isinstance(node, ast.FunctionDef)]
        assert names, task["id"]
        wrong = {name: (lambda *args, **kwargs: None) for name in names}
        with pytest.raises(AssertionError):
            exec(task["tests"], wrong)


def write_raw(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("written", ["1:45", "yes", "no", "on", "off", "2026-11-29", "1_000", "0b101", "12:30:45", "y", "n", "~x"])
def test_unquoted_slot_values_stay_the_text_written_yaml_1_2(tmp_path, written):
    """YAML 1.1 would read these as 105, True, False, a date, 1000, 5 ...: datagen reads YAML 1.2 core."""
    template = load_template(write_raw(tmp_path, f"id: tiny\nuser: 'At {{{{ t }}}}.'\nslots:\n  t: [{written}, other]\n"))
    rows = expand(template, 2, seed=0)
    assert sorted(r["messages"][-1]["content"] for r in rows) == sorted([f"At {written}.", "At other."])


@pytest.mark.parametrize("written,number", [("012", "12"), ("0o17", "15"), ("0x1F", "31"), ("+5", "5"), ("1e3", "1000.0"), ("2.50", "2.5"),
                                            (".inf", "inf"), ("-.Inf", "-inf"), (".nan", "nan"), ("007", "7")])
def test_unquoted_numbers_that_would_print_otherwise_are_refused(tmp_path, written, number):
    path = write_raw(tmp_path, f"id: tiny\nuser: 'At {{{{ t }}}}.'\nslots:\n  t: [x, {written}]\n")
    with pytest.raises(DatagenError) as info:
        load_template(path)
    assert str(info.value) == f"{path}: slots.t[1]: the unquoted value {written} reads as the number {number}; quote it ('{written}') to keep the text as written"


def test_numbers_that_print_as_written_and_quoted_text_are_kept(tmp_path):
    path = write_raw(tmp_path, "id: tiny\nuser: '{{ t }} {{ t + 1 if t is number else t }}'\nslots:\n  t: [12, 2.5, -3, '012', \"1:45\", 'true']\n")
    template = load_template(path)
    assert template.spec.slots["t"] == [12, 2.5, -3, "012", "1:45", "true"]
    contents = sorted(r["messages"][-1]["content"] for r in expand(template, 6, seed=0))
    assert contents == sorted(["12 13", "2.5 3.5", "-3 -2", "012 012", "1:45 1:45", "true true"])
    for written, what in (("true", "the boolean true"), ("False", "the boolean false"), ("~", "null (no value)"), ("null", "null (no value)")):
        path = write_raw(tmp_path, f"id: tiny\nuser: '{{{{ t }}}}'\nslots:\n  t: [x, {written}]\n")
        with pytest.raises(DatagenError) as info:
            load_template(path)
        assert str(info.value) == f"{path}: slots.t[1]: an unquoted value that reads as {what}; quote it to keep the text as written"


def test_weights_and_recipe_numbers_follow_yaml_1_2(tmp_path):
    from datagen.yaml_io import parse_yaml

    assert parse_yaml("a: [1e-3, 0x10, 0o10, 010, 1:30, yes, 2026-01-01, .5, null, ~, True]", "x") == {
        "a": [0.001, 16, 8, 10, "1:30", "yes", "2026-01-01", 0.5, None, None, True]
    }


@pytest.mark.slow  # the loop case spends the 5 s CPU limit on purpose
def test_rendering_is_bounded_in_time_and_memory_and_names_the_field(tmp_path):
    import time

    from datagen.bounded import GRACE_S, WALL_FACTOR
    from datagen.sources.templates import EXPAND_SECONDS

    cases = {
        "{{ t|center(2000000000) }}": "rendering needs more than 1024 MiB",
        "{{ 'x'|center(2000000000) }} {{ t }}": "rendering needs more than 1024 MiB",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ t }}": "rendering takes longer than",
    }
    for user, message in cases.items():
        path = write_raw(tmp_path, f"id: tiny\nuser: {user!r}\nslots:\n  t: [a, b]\n")
        start = time.monotonic()
        with pytest.raises(DatagenError) as info:
            expand(load_template(path), 2, seed=0)
        # CPU-time limit in the child; the parent's wall-time kill bounds it on a busy machine too
        assert time.monotonic() - start < WALL_FACTOR * EXPAND_SECONDS + GRACE_S + 5
        assert str(info.value).startswith(f"{path}: user: {message}"), str(info.value)

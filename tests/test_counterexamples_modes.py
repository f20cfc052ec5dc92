"""Clusters by failure mode on two independent sets of planted code failures, for 5 k-means seeds.

tests/data/code_failures.jsonl (40 failures: 18 hallucinated APIs, 14 off-by-one bounds, 8 missing
error checks) and tests/data/code_failures_b.jsonl (30 others, written separately: different
functions, phrasing and answer wrappers, 15/9/6). Their kinds are hidden in *_kinds.json, which
datagen never reads. For each set and each seed the plan must find 3 clusters, purity >= 0.9, and
split a budget of 100 exactly as the hidden kinds' largest-remainder shares. The failures are read
and embedded once per set (embed_plan_failures) and clustered once per seed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from datagen.counterexamples.allocate import allocate
from datagen.counterexamples.config import InputConfig
from datagen.counterexamples.plan import embed_plan_failures, make_plan
from datagen.counterexamples.structure import change_counts
from helpers import assert_real_code_failures

DATA = Path(__file__).parent / "data"
SETS = {"a": ("code_failures.jsonl", "code_failures_kinds.json"), "b": ("code_failures_b.jsonl", "code_failures_b_kinds.json")}


def load(name: str) -> tuple[Path, list[dict], dict[str, str]]:
    failures, kinds = SETS[name]
    path = DATA / failures
    return path, [json.loads(line) for line in path.read_text().splitlines()], json.loads((DATA / kinds).read_text())


@pytest.mark.slow  # > 4 s on 2 cores (sandbox runs / k-means / a killed child process)
def test_the_second_set_is_what_it_says():
    _, rows, kinds = load("b")
    assert Counter(kinds.values()) == {"api": 15, "off_by_one": 9, "error_handling": 6} and set(kinds) == {r["id"] for r in rows}
    assert {"severity", "tag"}.isdisjoint(rows[0]) and len({r["prompt"] for r in rows}) == 30
    _, rows_a, _ = load("a")
    names = lambda rs: {r["prompt"].split("`")[1].split("(")[0] for r in rs}  # noqa: E731
    assert not names(rows) & names(rows_a), "different functions from the first set"
    assert_real_code_failures(rows)


def test_change_kinds_counts_what_class_of_token_changed():
    # A bound: numbers and operators, no identifier.
    assert change_counts("for i in range(1, n):\n    t += i", "for i in range(1, n + 1):\n    t += i") == {
        "numbers_only_in_fix": 1, "operators_changed": 1}
    assert change_counts("while k < n:\n    k += 1", "while k <= n:\n    k += 1") == {"operators_changed": 2}
    # A guard: keywords added, every identifier of the failure kept.
    guard = change_counts("def f(xs):\n    return xs[0]", "def f(xs):\n    if not xs:\n        return None\n    return xs[0]")
    assert guard == {"keyword_if": 1, "keyword_not": 1, "keyword_return": 1, "keyword_None": 1}
    # An API: the failure calls something the fix does not (counted double), the fix its own name.
    assert change_counts("return s.zero_pad(w)", "return s.zfill(w)") == {"identifiers_only_in_failure": 2.0, "identifiers_only_in_fix": 1}
    assert change_counts("def f(:", "def f(x):\n    return x") is None, "not Python: no vector"


@pytest.fixture(scope="module", params=sorted(SETS))
def embedded(request):
    path, rows, kinds = load(request.param)
    config = InputConfig(failures=str(path))
    return config, embed_plan_failures(config), kinds


@pytest.mark.slow  # per set: one embedding, then 5 plans of 7 values of k x 5 k-means seeds each
def test_the_plan_finds_the_three_failure_modes_for_any_seed(embedded):
    config, shared, kinds = embedded
    assert shared.weights["change_kinds"] > 0
    counts = Counter(kinds.values())
    target = dict(zip(sorted(counts), allocate([counts[k] for k in sorted(counts)], 100)))
    for seed in range(5):
        report = make_plan(config, 100, seed, embedded=shared).report(details=True)
        clusters = report["clusters"]
        assert report["k"] == 3, (seed, report["silhouette"])
        majority = sum(Counter(kinds[i] for i in c["member_ids"]).most_common(1)[0][1] for c in clusters)
        assert majority / len(kinds) >= 0.9, seed
        by_kind = {Counter(kinds[i] for i in c["member_ids"]).most_common(1)[0][0]: c["budget"] for c in clusters}
        assert by_kind == target, (seed, by_kind)
        assert sum(c["budget"] for c in clusters) == 100

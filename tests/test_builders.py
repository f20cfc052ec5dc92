"""Pair strategies and SFT rows on scripted candidates: who may be chosen or rejected, margins,
no identical or near-duplicate sides, the length-ratio limit, counts per prompt, formats and stats."""

from __future__ import annotations

import json

import datasets
import polars as pl
import pytest

from datagen.outputs.config import PairsConfig
from datagen.outputs.pairs import build_pairs, pair_stats
from datagen.errors import DatagenError
from datagen.run.executor import run_pipeline
from datagen.recipe import load_recipe
from helpers import NO_ANSWER, QUESTION, RIGHT, RIGHT_TOO, WRONG, WRONG_TOO, candidate_frame



def frame(rows: list[dict]) -> pl.DataFrame:
    """Candidates as the last stage leaves them: every row, kept or dropped, with verdict columns."""
    return candidate_frame(rows)


def texts(pairs: pl.DataFrame, side: str) -> list[str]:
    return [messages[0]["content"] for messages in pairs[side].to_list()]


# --- verified ---------------------------------------------------------------------------------


def verified_rows(prompt: str = "p") -> list[dict]:
    return [
        {"prompt_id": prompt, "completion": RIGHT, "keep": True, "verify_keep": True, "verify_reason": None},
        {"prompt_id": prompt, "completion": RIGHT_TOO, "keep": True, "verify_keep": True, "verify_reason": None},
        {"prompt_id": prompt, "completion": WRONG, "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"},
        {"prompt_id": prompt, "completion": NO_ANSWER, "keep": False, "verify_keep": False, "verify_reason": "no_answer"},
        # cut off before the verifier: never a side of a pair
        {"prompt_id": prompt, "completion": "One hour has 60 minutes, so", "keep": False, "verify_keep": None, "verify_reason": None},
        # passed the verifier but dropped later (a duplicate): not alive, so never chosen
        {"prompt_id": prompt, "completion": WRONG_TOO, "keep": False, "verify_keep": True, "verify_reason": None, "dropped_by": "dedup"},
    ]


def test_verified_pairs_a_passing_alive_candidate_with_a_failed_one():
    pairs, tally = build_pairs(frame(verified_rows()), PairsConfig(strategy="verified", pairs_per_prompt=2))
    assert pairs.height == 2
    assert set(texts(pairs, "chosen")) == {RIGHT, RIGHT_TOO}, "the two passing candidates are spread over the pairs"
    assert set(texts(pairs, "rejected")) == {WRONG, NO_ANSWER}
    assert pairs["rejected_verdict"].to_list() == ["wrong_answer", "no_answer"]
    assert pairs["chosen_verdict"].to_list() == ["keep", "keep"]
    assert pairs["prompt"].to_list() == [QUESTION, QUESTION]
    assert pairs["strategy"].to_list() == ["verified"] * 2 and pairs["persona"].to_list() == ["a patient tutor"] * 2
    assert tally.prompts == 1 and tally.with_pairs == 1


def test_pairs_per_prompt_is_a_cap_and_each_rejected_is_used_once():
    for cap, expected in ((1, 1), (2, 2), (5, 2)):
        pairs, _ = build_pairs(frame(verified_rows()), PairsConfig(strategy="verified", pairs_per_prompt=cap))
        assert pairs.height == expected, cap
        assert pairs["rejected_id"].n_unique() == pairs.height


def test_prompts_without_a_passing_or_a_failing_candidate_give_no_pair():
    rows = verified_rows("both")
    rows += [{"prompt_id": "all_fail", "completion": WRONG, "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"}]
    rows += [{"prompt_id": "all_pass", "completion": RIGHT, "keep": True, "verify_keep": True, "verify_reason": None}]
    # a verifier that broke says nothing about the answer: not a rejected side
    rows += [{"prompt_id": "all_pass", "completion": WRONG, "keep": False, "verify_keep": False, "verify_reason": "verifier_error"}]
    pairs, tally = build_pairs(frame(rows), PairsConfig(strategy="verified"))
    assert pairs["prompt_id"].to_list() == ["both"]
    assert tally.prompts == 3 and dict(tally.without_pairs) == {"no_chosen": 1, "no_rejected": 1}


def test_identical_and_near_duplicate_sides_are_never_paired():
    long_right = RIGHT + " To check, 210 minutes divided by 60 is 3.5 hours, which matches the time given in the problem."
    rows = [
        {"prompt_id": "p", "completion": long_right, "keep": True, "verify_keep": True, "verify_reason": None},
        # same text failed once (a flaky timeout): twins must never become a pair
        {"prompt_id": "p", "completion": long_right, "keep": False, "verify_keep": False, "verify_reason": "timeout"},
        # only case and punctuation differ: identical after normalization
        {"prompt_id": "p", "completion": long_right.upper().replace(",", ";"), "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"},
        {"prompt_id": "p", "completion": WRONG, "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"},
    ]
    pairs, tally = build_pairs(frame(rows), PairsConfig(strategy="verified", pairs_per_prompt=3))
    assert texts(pairs, "rejected") == [WRONG]
    assert dict(tally.skipped) == {"identical": 1, "near_duplicate": 1}
    strict, _ = build_pairs(frame(rows), PairsConfig(strategy="verified", pairs_per_prompt=3, near_duplicate_threshold=1.0))
    assert strict.height == 1, "case and punctuation alone never make two sides different"


def test_length_ratio_limit():
    rambling = WRONG + " " + " ".join(["Sundials were the first clocks, and they told the time by the shadow of a stick."] * 6)
    rows = [
        {"prompt_id": "p", "completion": RIGHT, "keep": True, "verify_keep": True, "verify_reason": None},
        {"prompt_id": "p", "completion": rambling, "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"},
        {"prompt_id": "p", "completion": WRONG_TOO, "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"},
    ]
    unlimited, _ = build_pairs(frame(rows), PairsConfig(strategy="verified", pairs_per_prompt=2))
    assert unlimited.height == 2
    limited, tally = build_pairs(frame(rows), PairsConfig(strategy="verified", pairs_per_prompt=2, max_length_ratio=1.5))
    assert texts(limited, "rejected") == [WRONG_TOO] and dict(tally.skipped) == {"length_ratio": 1}
    for chosen, rejected in zip(texts(limited, "chosen"), texts(limited, "rejected")):
        assert max(len(chosen), len(rejected)) / min(len(chosen), len(rejected)) <= 1.5


# --- score_margin -------------------------------------------------------------------------------


def scored(prompt: str, scores: list[float | None], alive: list[bool]) -> list[dict]:
    answers = [RIGHT, RIGHT_TOO, WRONG, WRONG_TOO, NO_ANSWER]
    return [
        {"prompt_id": prompt, "completion": answers[i], "keep": alive[i], "judge_score": score,
         "judge_keep": score is None or score >= 2, "judge_reason": None if score is None or score >= 2 else "low_score"}
        for i, score in enumerate(scores)
    ]


def test_score_margin_pairs_best_against_worst_and_respects_the_margin():
    rows = scored("p", [4.5, 3.0, 1.0, None], [True, True, False, True])
    pairs, _ = build_pairs(frame(rows), PairsConfig(strategy="score_margin"))
    assert texts(pairs, "chosen") == [RIGHT] and texts(pairs, "rejected") == [WRONG]
    row = pairs.row(0, named=True)
    assert (row["chosen_score"], row["rejected_score"], row["margin"], row["rejected_verdict"]) == (4.5, 1.0, 3.5, "low_score")

    more, _ = build_pairs(frame(rows), PairsConfig(strategy="score_margin", pairs_per_prompt=3))
    assert more["margin"].to_list() == [3.5, 1.5], "the second pair is the best vs the next worst; 3.0 is not both sides"
    assert (more["margin"] >= 1.0).all() and set(more["chosen_id"]).isdisjoint(more["rejected_id"])

    wide, _ = build_pairs(frame(rows), PairsConfig(strategy="score_margin", pairs_per_prompt=3, min_margin=2.0))
    assert wide["margin"].to_list() == [3.5]


def test_score_margin_skips_ties_small_margins_and_unscored_rows():
    rows = scored("close", [2.5, 2.0], [True, True]) + scored("tied", [3.0, 3.0], [True, True])
    rows += scored("unscored", [None, None], [True, True]) + scored("exact", [7 / 3, 4 / 3], [True, True])
    pairs, tally = build_pairs(frame(rows), PairsConfig(strategy="score_margin"))
    assert pairs["prompt_id"].to_list() == ["exact"], "a margin of exactly min_margin counts despite float rounding"
    assert pairs["margin"].to_list() == [1.0], "the margin column holds the difference compared, 7/3 - 4/3 = 1"
    assert dict(tally.without_pairs) == {"below_margin": 2, "unscored": 1}
    zero, _ = build_pairs(frame(scored("tied", [3.0, 3.0], [True, True])), PairsConfig(strategy="score_margin", min_margin=0))
    assert zero.height == 0, "equal scores never make a pair"


def test_score_margin_says_why_a_prompt_gave_no_pair_in_its_own_terms():
    # a survivor without a score next to a scored one: one score, nothing to compare it with
    rows = scored("one", [4.0, None], [True, True])
    # both scored, the better one dropped later and the worse one too: no chosen side
    rows += scored("dropped", [4.0, 1.0], [False, False])
    # survivors, none scored (the judge never answered for them)
    rows += scored("none", [None, None, None], [True, True, False])
    pairs, tally = build_pairs(frame(rows), PairsConfig(strategy="score_margin"))
    assert pairs.height == 0
    assert dict(tally.without_pairs) == {"one_scored": 1, "no_chosen": 1, "unscored": 1}


def test_score_margin_reads_a_custom_score_column_and_reports_a_missing_one():
    rows = [r | {"vote_agreement": s} for r, s in zip(scored("p", [None, None, None], [True, True, False]), [0.9, 0.5, 0.1])]
    pairs, _ = build_pairs(frame(rows), PairsConfig(strategy="score_margin", score_column="vote_agreement", min_margin=0.5))
    assert texts(pairs, "chosen") == [RIGHT] and texts(pairs, "rejected") == [WRONG]
    with pytest.raises(DatagenError, match="no column 'missing_score'"):
        build_pairs(frame(rows), PairsConfig(strategy="score_margin", score_column="missing_score"))


# --- pairwise ------------------------------------------------------------------------------------


def comparisons(*items: tuple[str, str, bool | None]) -> str:
    return json.dumps([{"opponent": o, "result": r, "consistent": c} for o, r, c in items])


def test_pairwise_uses_only_order_consistent_wins_of_alive_candidates():
    rows = [
        {"candidate_id": "a", "completion": RIGHT, "keep": True, "judge_win_rate": 0.75,
         "judge_comparisons": comparisons(("b", "win", True), ("c", "tie", False))},
        {"candidate_id": "b", "completion": WRONG, "keep": False, "judge_win_rate": 0.0,
         "judge_comparisons": comparisons(("a", "loss", True), ("d", "loss", True))},
        {"candidate_id": "c", "completion": RIGHT_TOO, "keep": True, "judge_win_rate": 0.5,
         "judge_comparisons": comparisons(("a", "tie", False), ("d", "error", None))},
        # beat b consistently but was dropped afterwards: not a chosen side
        {"candidate_id": "d", "completion": WRONG_TOO, "keep": False, "judge_win_rate": 1.0,
         "judge_comparisons": comparisons(("b", "win", True), ("c", "error", None))},
    ]
    pairs, _ = build_pairs(frame([r | {"prompt_id": "p"} for r in rows]), PairsConfig(strategy="pairwise", pairs_per_prompt=4))
    assert pairs.select("chosen_id", "rejected_id", "chosen_verdict", "rejected_verdict").rows() == [("a", "b", "win", "loss")]
    assert pairs["chosen_score"].to_list() == [0.75] and pairs["margin"].to_list() == [0.75]

    ties_only = [r | {"prompt_id": "q", "keep": True} for r in rows[2:3]]
    empty, tally = build_pairs(frame(ties_only), PairsConfig(strategy="pairwise"))
    assert empty.height == 0 and dict(tally.without_pairs) == {"no_consistent_win": 1}

    # survivors the judge never compared (the prompt had one candidate left) vs no survivor at all
    alone = [{"prompt_id": "alone", "candidate_id": "e", "completion": RIGHT, "keep": True, "judge_win_rate": None, "judge_comparisons": None}]
    gone = [r | {"prompt_id": "gone", "candidate_id": r["candidate_id"] + "2", "keep": False} for r in rows[:2]]
    empty, tally = build_pairs(frame(alone + gone), PairsConfig(strategy="pairwise"))
    assert empty.height == 0 and dict(tally.without_pairs) == {"not_compared": 1, "no_chosen": 1}


def test_every_reason_a_strategy_gives_for_no_pair_is_explained():
    import ast
    import inspect

    from datagen.outputs.pairs import STRATEGIES
    from datagen.report.view import NO_PAIR_REASONS

    returned = set()
    for strategy in STRATEGIES.values():
        for node in ast.walk(ast.parse(inspect.getsource(strategy))):
            value = node.value if isinstance(node, ast.Return) else None
            branches = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
            returned |= {b.value for b in branches if isinstance(b, ast.Constant) and isinstance(b.value, str)}
    assert {"no_chosen", "unscored", "one_scored", "not_compared", "no_minority"} <= returned
    assert sorted(returned - set(NO_PAIR_REASONS)) == []


# --- critique_revision ---------------------------------------------------------------------------


def test_critique_revision_pairs_the_revision_against_its_original():
    better = "Each hour has 60 minutes: 3.5 x 60 = 210 minutes. Check: 210 / 60 = 3.5 hours. \\boxed{210}"
    steps = [f"In step {n} I multiplied {n * 60} minutes by {n} and wrote the result in row {n} of my table." for n in range(1, 9)]
    long_original = WRONG + " " + " ".join(steps)  # ~140 words: one changed word leaves Jaccard above 0.9
    rows = [
        {"prompt_id": "revised", "completion": WRONG, "revise_revision": better, "revise_error": None},
        {"prompt_id": "unchanged", "completion": WRONG, "revise_revision": WRONG, "revise_error": None},
        {"prompt_id": "one_word", "completion": long_original, "revise_revision": long_original.replace("row 4", "line 4"), "revise_error": None},
        {"prompt_id": "failed", "completion": WRONG, "revise_revision": None, "revise_error": "revision: cut off at max_tokens"},
    ]
    rows = [r | {"keep": True, "revise_principle": "honest", "revise_critique": "The minutes are wrong."} for r in rows]
    pairs, tally = build_pairs(frame(rows), PairsConfig(strategy="critique_revision"))
    assert pairs["prompt_id"].to_list() == ["revised"]
    assert texts(pairs, "chosen") == [better] and texts(pairs, "rejected") == [WRONG]
    row = pairs.row(0, named=True)
    assert (row["principle"], row["critique"], row["chosen_verdict"], row["rejected_verdict"]) == ("honest", "The minutes are wrong.", "revision", "original")
    assert row["chosen_id"] == row["rejected_id"] == "revised-0"
    assert dict(tally.without_pairs) == {"all_skipped": 2, "no_revision": 1}
    assert dict(tally.skipped) == {"identical": 1, "near_duplicate": 1}


# --- formats and stats ---------------------------------------------------------------------------


def test_standard_style_is_plain_strings():
    pairs, _ = build_pairs(frame(verified_rows()), PairsConfig(strategy="verified", style="standard"))
    row = pairs.row(0, named=True)
    assert row["prompt"] == QUESTION[0]["content"] + "\n\n" + QUESTION[1]["content"]
    assert (row["chosen"], row["rejected"]) == (RIGHT, WRONG)
    assert pairs.schema["chosen"] == pl.String


def test_no_pairs_is_an_empty_frame_with_the_full_schema():
    rows = [{"prompt_id": "p", "completion": WRONG, "keep": False, "verify_keep": False, "verify_reason": "wrong_answer"}]
    pairs, _ = build_pairs(frame(rows), PairsConfig(strategy="verified"))
    assert pairs.height == 0 and pairs.columns[:3] == ["prompt", "chosen", "rejected"] and "template_id" in pairs.columns
    empty, tally = build_pairs(frame(rows).clear(), PairsConfig(strategy="verified"))
    assert empty.schema == pairs.schema and tally.prompts == 0


def test_length_stats_describe_len_chosen_minus_len_rejected():
    rows = verified_rows("a") + verified_rows("b")
    config = PairsConfig(strategy="verified", pairs_per_prompt=2)
    pairs, tally = build_pairs(frame(rows), config)
    stats = pair_stats(tally, config)
    deltas = [len(c) - len(r) for c, r in zip(texts(pairs, "chosen"), texts(pairs, "rejected"))]
    lengths = stats["length_delta_chars"]
    assert stats["pairs"] == len(deltas) == 4 and stats["prompts_with_pairs"] == 2
    assert lengths["mean"] == round(sum(deltas) / 4, 1) and lengths["min"] == min(deltas) and lengths["max"] == max(deltas)
    assert lengths["median"] == sorted(deltas)[1] / 2 + sorted(deltas)[2] / 2
    assert lengths["chosen_longer"] == sum(d > 0 for d in deltas) / 4


# --- recipe config and the executor ------------------------------------------------------------


def test_output_config_validation(project):
    path = project(stages=[{"stage": "verify", "verifiers": {"*": {"kind": "contains", "value": "42"}}}])
    assert load_recipe(path, ["output.format=dpo"]).recipe.output.pairs == PairsConfig()
    cases = {
        "output.pairs.strategy=verified": "pairs only applies to format: dpo",
        "output.format=dpo --set output.pairs.strategy=score_margin --set output.pairs.stage=verify": "not a score column",
        "output.format=dpo --set output.pairs.strategy=pairwise": "reads the stage 'judge', which the recipe does not have",
        "output.format=dpo --set output.pairs.min_margin=2": "min_margin only applies to strategy: score_margin",
        "output.format=dpo --set output.pairs.stage=verify --set output.pairs.strategy=critique_revision": "needs a revise stage",
        "output.format=dpo --set output.pairs.max_length_ratio=0.5": "greater than or equal to 1",
        "output.format=dpo --set output.pairs.colour=red": "unknown field",
    }
    for overrides, message in cases.items():
        with pytest.raises(DatagenError, match=message):
            load_recipe(path, overrides.split(" --set "))


SCRIPTED = [
    "Let me think it through: six times seven is 42, so the answer is 42.",
    "It is probably 41, but I am honestly not sure about any of this at all.",
    "Forty-one. Definitely forty-one, because that is what it always is.",
]


def test_dpo_run_writes_pairs_that_datasets_loads_and_a_card_with_pair_stats(project):
    path = project(
        backend={"kind": "scripted", "responses": SCRIPTED, "sampling": {"n": 4, "max_tokens": 40}},
        stages=[{"stage": "finished"}, {"stage": "verify", "verifiers": {"*": {"kind": "contains", "value": "42"}}}],
        output={"format": "dpo", "pairs": {"strategy": "verified", "pairs_per_prompt": 2}},
    )
    out = project.root / "out"
    result = run_pipeline(load_recipe(path), out, progress=False)
    candidates = pl.read_parquet(out / "run" / "stages" / "02_verify" / "*.parquet")
    ds = datasets.load_dataset(str(out), split="train")
    assert result.rows_written == ds.num_rows > 0
    assert ds.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert ds.features["chosen"].feature["role"].dtype == "string"
    by_id = {row["candidate_id"]: row for row in candidates.iter_rows(named=True)}
    for row in ds:
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
        chosen, rejected = by_id[row["chosen_id"]], by_id[row["rejected_id"]]
        assert chosen["keep"] and chosen["verify_keep"] and "42" in row["chosen"][0]["content"]
        assert rejected["verify_keep"] is False and row["rejected_verdict"] == "not_found"
        assert chosen["prompt_id"] == rejected["prompt_id"] == row["prompt_id"] and row["chosen"] != row["rejected"]
    per_prompt = pl.Series(ds["prompt_id"]).value_counts()["count"]
    assert per_prompt.max() <= 2
    card = (out / "README.md").read_text()
    assert "## Preference pairs" in card and f"- Pairs: {ds.num_rows} from" in card and "len(chosen) - len(rejected)" in card
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["output"]["pairs"] == ds.num_rows and manifest["output"]["strategy"] == "verified"

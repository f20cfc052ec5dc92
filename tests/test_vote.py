from __future__ import annotations

import json
import math
from collections import Counter

import datasets
import polars as pl
import pytest
from pydantic import ValidationError

from datagen.errors import DatagenError
from datagen.report.sections.vote import VoteSection
from datagen.run.executor import apply_stage, run_pipeline
from datagen.recipe import load_recipe
from datagen.steps.verify import VerifyConfig
from datagen.steps.vote import VoteConfig, pass_at_k

from helpers import candidate_frame, write_yaml

HALF = [
    "Half of the 10 coins land heads, so the probability is \\boxed{1/2}.",
    "The probability is 0.5.",
    "Each outcome is equally likely. Answer: \\frac{1}{2}",
    "There are 3 outcomes, so I get \\boxed{1/3}.",
    "I am not sure how to solve this.",
]


def candidates(prompts: dict[str, tuple[str | None, list[str]]]) -> pl.DataFrame:
    """One row per completion, prompt by prompt, sample_index in order: {prompt_id: (reference, texts)}."""
    return candidate_frame(
        {"prompt_id": pid, "sample_index": i, "completion": text, "reference": reference}
        for pid, (reference, texts) in prompts.items()
        for i, text in enumerate(texts)
    )


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_the_closed_form():
    assert round(pass_at_k(100, 30, 1), 3) == 0.300
    assert round(pass_at_k(100, 30, 10), 3) == 0.977
    for n in (1, 5, 16, 100):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 8, 3) == 1.0, "k > n - c: every draw of k holds a correct sample"
    for n, c, k in ((10, 11, 1), (10, 3, 11), (10, 3, 0), (10, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_equivalent_forms_are_one_answer_class():
    out = VoteConfig().build()(candidates({"coins": ("1/2", HALF)}))
    answers = out["vote_answer"].to_list()
    assert answers[3] is not None and answers[4] is None
    assert out["vote_majority"].to_list() == [answers[0]] * 5
    assert out["vote_agreement"].to_list() == [0.6] * 5
    assert out["vote_in_majority"].to_list() == [True, True, True, False, False]
    assert out["vote_correct"].to_list() == [True, True, True, False, False]
    assert out["vote_n"].to_list() == [5] * 5 and out["vote_pass_rate"].to_list() == [0.6] * 5
    assert out["vote_pass_at_1"][0] == pytest.approx(0.6) and out["vote_pass_at_5"][0] == 1.0
    assert out["vote_pass_at_10"].is_null().all(), "k > n has no estimate"
    assert out["vote_keep"].all() and out["vote_reason"].is_null().all(), "annotate only by default"


def test_tie_goes_to_the_earliest_sample_and_rows_keep_their_order():
    rows = [
        ("pairs", 2, "Two pairs make \\boxed{4}.", None),
        ("other", 0, "It is \\boxed{9}.", "9"),
        ("pairs", 0, "Counting once gives \\boxed{3}.", None),
        ("pairs", 3, "So \\boxed{3}.", None),
        ("other", 1, "Answer: 9", "9"),
        ("pairs", 1, "Again \\boxed{4}.", None),
    ]
    batch = candidate_frame({"prompt_id": p, "sample_index": i, "completion": c, "reference": r} for p, i, c, r in rows)
    out = VoteConfig().build()(batch)
    assert out.select("prompt_id", "sample_index").equals(batch.select("prompt_id", "sample_index"))
    pairs = out.filter(pl.col("prompt_id") == "pairs")
    assert pairs["vote_majority"].unique().to_list() == ["3"], "sample 0 answered 3, so 3 wins the 2-2 tie"
    assert pairs["vote_agreement"].to_list() == [0.5] * 4
    assert pairs["vote_in_majority"].to_list() == [False, True, True, False]
    other = out.filter(pl.col("prompt_id") == "other")
    assert other["vote_agreement"].to_list() == [1.0, 1.0] and other["vote_pass_rate"].to_list() == [1.0, 1.0]


def test_keep_majority_drops_minority_and_unanswered_samples():
    out = VoteConfig(keep="majority").build()(candidates({"coins": ("1/2", HALF)}))
    assert out["vote_keep"].to_list() == [True, True, True, False, False]
    assert out["vote_reason"].to_list() == [None, None, None, "minority_answer", "no_answer"]


def test_min_agreement_drops_every_sample_of_a_split_prompt():
    batch = candidates({"coins": ("1/2", HALF), "sum": ("12", ["5 + 7 = \\boxed{12}", "Answer: 12"])})
    out = VoteConfig(min_agreement=0.75).build()(batch)
    assert out["vote_reason"].to_list() == ["low_agreement"] * 5 + [None, None]


def test_pass_rate_band_drops_all_pass_all_fail_and_unreferenced_prompts():
    batch = candidates({
        "all_pass": ("12", ["5 + 7 = \\boxed{12}", "Answer: 12", "The total is 12."]),
        "all_fail": ("12", ["5 + 7 = \\boxed{13}", "Answer: 11", "I cannot tell."]),
        "mixed": ("12", ["5 + 7 = \\boxed{12}", "Answer: 11", "The total is 12."]),
        "open": (None, ["Rivers carve valleys over millions of years.", "Answer: 3"]),
        "broken": ("\\boxed{}", ["Answer: 3"]),
    })
    out = VoteConfig(pass_rate_band=(0.01, 0.99)).build()(batch)
    reasons = dict(out.group_by("prompt_id").agg(pl.col("vote_reason").unique()).rows())
    assert reasons == {
        "all_pass": ["pass_rate_out_of_band"],
        "all_fail": ["pass_rate_out_of_band"],
        "mixed": [None],
        "open": ["no_reference"],
        "broken": ["unparsable_reference"],
    }
    mixed = out.filter(pl.col("prompt_id") == "mixed")
    assert mixed["vote_pass_rate"][0] == pytest.approx(2 / 3) and mixed["vote_keep"].all()
    inclusive = VoteConfig(pass_rate_band=(0.0, 2 / 3)).build()(batch.filter(pl.col("reference") == "12"))
    assert dict(inclusive.group_by("prompt_id").agg(pl.col("vote_keep").all()).rows()) == {"all_pass": False, "all_fail": True, "mixed": True}, "the band includes its ends"


def test_prompts_without_reference_get_null_pass_figures():
    out = VoteConfig().build()(candidates({"open": (None, ["Answer: 3", "It is \\boxed{3}", "Maybe 4"])}))
    for column in ("vote_correct", "vote_pass_rate", "vote_pass_at_1", "vote_pass_at_5"):
        assert out[column].is_null().all(), column
    assert out["vote_majority"].to_list() == ["3"] * 3 and out["vote_agreement"][0] == pytest.approx(2 / 3)
    assert out["vote_keep"].all()


def test_summary_counts_only_voted_rows_and_flags_shared_misconceptions():
    batch = candidates({
        "misled": ("13", ["6 + 7 = \\boxed{12}", "Answer: 12", "6 + 7 = \\boxed{13}"]),
        "easy": ("12", ["\\boxed{12}", "Answer: 12", "12"]),
        "hard": ("5", ["\\boxed{12}", "I give up.", "Answer: 7", "Answer: 5"]),
        "open": (None, ["Answer: 3", "Answer: 4", "Answer: 3"]),
    })
    # The last sample of "hard" was dropped by an earlier stage: the vote never sees it.
    batch = batch.with_columns(keep=pl.col("completion") != "Answer: 5")
    batch = batch.with_columns(dropped_by=pl.when(pl.col("keep")).then(None).otherwise(pl.lit("finished")))
    stage = VoteConfig(ks=[1, 3]).build()
    out = apply_stage(stage, batch)
    hard = out.filter(pl.col("prompt_id") == "hard")
    assert hard["vote_n"].to_list() == [3, 3, 3, None] and hard["vote_pass_rate"][0] == 0.0
    summary = stage.summarize(out.lazy())
    assert summary == {
        "prompts": 4,
        "samples": 12,
        "samples_without_answer": 1,
        "mean_agreement": round((2 / 3 + 1 + 1 / 3 + 2 / 3) / 4, 4),
        "agreement_histogram": {"0.0-0.2": 0, "0.2-0.4": 1, "0.4-0.6": 0, "0.6-0.8": 2, "0.8-1.0": 1},
        "prompts_with_reference": 3,
        "mean_pass_rate": round((1 / 3 + 1 + 0) / 3, 4),
        "pass_at_k": {"pass@1": round((1 / 3 + 1 + 0) / 3, 4), "pass@3": round((1 + 1 + 0) / 3, 4)},
        "pass_at_k_prompts": {"pass@1": 3, "pass@3": 3},
        "majority_accuracy": round(1 / 3, 4),
        "all_pass": 1,
        "all_fail": 1,
        "majority_wrong_some_right": 1,
    }
    json.dumps(summary)  # it goes into the manifest


def test_pass_at_k_says_over_how_many_prompts_it_averages():
    batch = candidates({"four": ("3", ["Answer: 3", "Answer: 4", "Answer: 3", "Answer: 5"]), "two": ("3", ["Answer: 3", "Answer: 3"])})
    stage = VoteConfig(ks=[1, 4]).build()
    summary = stage.summarize(apply_stage(stage, batch).lazy())
    # pass@1: 2 of 4 right, 2 of 2 right; pass@4 only for the prompt with 4 samples, 1 - C(2, 4) / C(4, 4)
    assert summary["pass_at_k"] == {"pass@1": round((2 / 4 + 2 / 2) / 2, 4), "pass@4": 1.0}
    assert summary["pass_at_k_prompts"] == {"pass@1": 2, "pass@4": 1}
    headline = VoteSection().headline(summary)
    assert headline.startswith("pass@1 75.0%, pass@4 100.0% (over 1 prompt);"), headline


# Answers as a model writes them in running text or in a box. Some read differently as a reference
# than as an extracted answer: "1 (1)" at the end of a sentence answers 1, a reference "1 (1)" is
# the mixed number 2.
SAMPLES = {
    "mixed_number_like": ["So, the answer is 1 (1).", "The correct answer is 1.", "So, the answer is 4000.", "So, the answer is 10."],
    "in_parentheses": ["so it is 3 (4 - 1)", "the answer is 2 (3)", "Answer: \\boxed{2}", "\\boxed{3}"],
    "radicals": ["\\boxed{2\\sqrt{2}}", "It is \\boxed{\\sqrt{8}}.", "\\boxed{3}"],
    "percent": ["\\boxed{50\\%}", "\\boxed{0.5}", "The answer is 1/2.", "\\boxed{5}"],
    "plus_minus": ["\\boxed{\\pm 2}", "\\boxed{\\{-2, 2\\}}", "x = 2", "no idea"],
    "grouped_digits": ["The final answer is 1 200", "\\boxed{1,200}", "\\boxed{12}"],
}


@pytest.mark.parametrize("column", ["vote_majority", "vote_answer"])
def test_verify_against_the_vote_agrees_with_the_vote(column):
    # self_instruct_math verifies each solution against vote_majority, restyle against vote_answer:
    # verify must keep exactly the samples the vote counted in the majority (its own answer).
    voted = apply_stage(VoteConfig(ks=[1]).build(), candidates({p: (None, texts) for p, texts in SAMPLES.items()}))
    config = VerifyConfig(reference_column=column, verifiers={"*": {"kind": "math"}})
    verified = apply_stage(config.build(), voted, config)
    answered = verified.filter(pl.col("vote_answer").is_not_null())
    assert answered.height == sum(map(len, SAMPLES.values())) - 1, "every sample but 'no idea' has an answer"
    expected = answered["vote_in_majority"] if column == "vote_majority" else pl.Series([True] * answered.height)
    mismatched = answered.filter(pl.col("verify_keep") != expected).select("completion", "vote_answer", "vote_majority", "verify_detail")
    assert mismatched.height == 0, mismatched.rows()
    assert voted.filter(pl.col("prompt_id") == "mixed_number_like")["vote_in_majority"].to_list() == [True, True, False, False]


def test_min_votes_and_min_agreement_drop_prompts_without_a_real_majority():
    batch = candidates({
        "lone": ("3", ["Answer: 3"]),  # one sample left: agreement 1.0, but a single vote
        "split": ("3", ["Answer: 3", "Answer: 4", "Answer: 5", "I do not know"]),  # 1 of 4
        "pair": ("3", ["Answer: 3", "Answer: 3", "Answer: 4", "no answer here"]),  # 2 of 4
    })
    out = apply_stage(VoteConfig(min_agreement=0.5, min_votes=2).build(), batch)
    reasons = dict(out.group_by("prompt_id").agg(pl.col("vote_reason").first()).rows())
    assert reasons == {"lone": "too_few_votes", "split": "low_agreement", "pair": None}
    assert out.filter(pl.col("prompt_id") == "pair")["vote_keep"].all()
    assert not out.filter(pl.col("prompt_id") != "pair")["vote_keep"].any(), "every sample of such a prompt is dropped"


def test_the_headline_without_references_claims_no_pass_figures():
    batch = candidates({"open": (None, ["Answer: 3", "Answer: 3", "Answer: 4"]), "free": (None, ["Answer: 1", "Answer: 2"])})
    stage = VoteConfig(ks=[1]).build()
    summary = stage.summarize(apply_stage(stage, batch).lazy())
    assert VoteSection().headline(summary) == (
        f"mean agreement {round((2 / 3 + 1 / 2) / 2, 4)} over 2 prompts; no reference answers, so no pass rate or pass@k")
    with_reference = candidates({"ref": ("3", ["Answer: 3", "Answer: 4"]), "open": (None, ["Answer: 1"])})
    summary = stage.summarize(apply_stage(stage, with_reference).lazy())
    assert VoteSection().headline(summary).endswith("all-pass 0, all-fail 0 of 1 prompts with a reference")


def test_bad_vote_config_is_a_validation_error(project):
    for bad in ({"pass_rate_band": [0.9, 0.1]}, {"pass_rate_band": [0.1, 1.5]}, {"ks": [0]}, {"ks": [1, 1]}, {"min_votes": 0}, {"min_agreement": 2}, {"keep": "most"}, {"k": [1]}):
        with pytest.raises(ValidationError):
            VoteConfig.model_validate(bad)
    with pytest.raises(DatagenError, match="pass_rate_band"):
        load_recipe(project(stages=[{"stage": "vote", "pass_rate_band": [0.5]}]))


ARITH_TEMPLATE = {
    "id": "arith",
    "user": "{{ problem.question }} Put the final answer in \\boxed{}.",
    "reference": "{{ problem.answer }}",
    "expansion": {"mode": "product"},
    "slots": {
        "problem": [
            {"id": "five_plus_seven", "question": "What is 5 + 7?", "answer": "12"},
            {"id": "twenty_minus_eight", "question": "What is 20 - 8?", "answer": "12"},
            {"id": "six_plus_seven", "question": "What is 6 + 7?", "answer": "13"},
            {"id": "two_plus_three", "question": "What is 2 + 3?", "answer": "5"},
        ]
    },
}
# The scripted backend picks one of these per sample; the value is what a reader takes as its answer.
RESPONSES = {
    "Adding the parts gives 12, so the total is \\boxed{12}.": "12",
    "Counting again carefully. Answer: 12": "12",
    "I carried a one too many and got \\boxed{13}.": "13",
    "I am not sure how to solve this one.": None,
}


def test_pipeline_reports_agreement_and_pass_at_k(project):
    write_yaml(project.root / "templates" / "arith.yaml", ARITH_TEMPLATE)
    n, ks = 8, [1, 4, 16]
    path = project(
        templates=[{"name": "arith"}, {"name": "tiny", "count": 2}],
        backend={"kind": "scripted", "responses": list(RESPONSES), "sampling": {"n": n, "max_tokens": 50}},
        stages=[{"stage": "vote", "ks": ks, "pass_rate_band": [0.01, 0.99]}],
    )
    out = project.root / "out"
    result = run_pipeline(load_recipe(path), out, progress=False)
    rows = pl.read_parquet(out / "run" / "stages" / "01_vote" / "*.parquet")

    agreements, pass_at, expected_drops, misled = [], {k: [] for k in ks}, Counter(), 0
    for (prompt_id,), group in rows.sort("sample_index").group_by("prompt_id", maintain_order=True):
        values = [RESPONSES[text] for text in group["completion"]]
        counts = Counter(v for v in values if v is not None)
        agreement = max(counts.values(), default=0) / n
        majority = next(v for v in values if v is not None and counts[v] == max(counts.values()))  # ties: earliest sample
        agreements.append(agreement)
        assert group["vote_agreement"].to_list() == [agreement] * n and group["vote_n"].to_list() == [n] * n
        assert group["vote_majority"].to_list() == [majority] * n
        reference = group["reference"][0]
        if reference is None:
            assert group["vote_pass_rate"].is_null().all()
            expected_drops["no_reference"] += n
            continue
        correct = counts[reference]
        misled += majority != reference and correct > 0
        assert group["vote_pass_rate"][0] == correct / n
        for k in ks:
            got = group[f"vote_pass_at_{k}"][0]
            if k > n:
                assert got is None
            else:
                assert got == pytest.approx(closed_form(n, correct, k))
                pass_at[k].append(got)
        if correct in (0, n):
            expected_drops["pass_rate_out_of_band"] += n

    assert expected_drops["pass_rate_out_of_band"] >= n, "2 + 3 = 5 is never answered: an all-fail prompt"
    stats = {s["stage"]: s for s in result.stage_stats}["vote"]
    assert stats["dropped"] == dict(expected_drops)
    assert result.rows_written == rows.height - sum(expected_drops.values()) > 0
    summary = stats["summary"]
    assert summary["prompts"] == 6 and summary["prompts_with_reference"] == 4
    assert summary["majority_wrong_some_right"] == misled
    assert summary["mean_agreement"] == round(sum(agreements) / len(agreements), 4)
    assert summary["pass_at_k"] == {"pass@1": round(sum(pass_at[1]) / 4, 4), "pass@4": round(sum(pass_at[4]) / 4, 4), "pass@16": None}
    assert summary["pass_at_k_prompts"] == {"pass@1": 4, "pass@4": 4, "pass@16": 0}, "no prompt has 16 samples"

    card = (out / "README.md").read_text()
    assert "### vote" in card and f"mean_agreement: {summary['mean_agreement']}" in card
    assert f"pass@4: {summary['pass_at_k']['pass@4']}" in card
    assert "pass@16 - (over 0 prompts)" in card and "pass@4 (over" not in card
    kept = datasets.load_dataset(str(out), split="train")
    assert {"vote_agreement", "vote_majority", "vote_pass_at_4"} <= set(kept.column_names)

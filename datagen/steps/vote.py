"""Self-consistency over a prompt's n samples: majority answer, agreement, pass rate and pass@k.

Answers are extracted and compared with datagen.text.answers, the same notion of "the same answer" as
the math verifier. A sample with no extractable answer joins no answer class: it counts in n (so
it lowers the agreement and the pass rate) but never in a vote. All figures are over the samples
still alive when this stage runs; `<label>_n` records how many that was, so put `vote` before
filters that drop samples by content if the pass rate should describe the raw generator.

`<label>_answer` and `<label>_majority` hold each answer written as a reference
(datagen.text.answers.reference_text): the extracted text when a reference reads it back as the
same value, else its LaTeX; so `verify` with `reference_column: <label>_majority` keeps exactly the
samples the vote counted in the majority. ("so the answer is 1 (1)." is written 1: as a reference
"1 (1)" would be the mixed number 2.)

A shared misconception can win a vote, which is why agreement is reported next to correctness and
the summary counts prompts whose majority is wrong although some sample is right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from datagen.text.answers import Answer, equivalent, extract_answer, parse_reference, reference_text
from datagen.steps.base import Scope, StageConfigBase, Step, group_ids

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
AGREEMENT_BINS = [0.2, 0.4, 0.6, 0.8]
AGREEMENT_BIN_LABELS = ["0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as a product (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"),
    which never forms the huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


class VoteConfig(StageConfigBase):
    stage: Literal["vote"] = "vote"
    scope: ClassVar[Scope] = "group"
    ks: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 5, 10], description="pass@k for each k")
    keep: Literal["all", "majority"] = Field("all", description="majority: drop samples outside the majority answer class")
    min_agreement: Rate | None = Field(None, description="drop every sample of a prompt whose agreement is below this")
    min_votes: int | None = Field(None, ge=1, description="drop every sample of a prompt whose majority answer has fewer samples than this")
    pass_rate_band: tuple[Rate, Rate] | None = Field(
        None, description="[lo, hi], inclusive: drop prompts whose pass rate is outside (e.g. [0.01, 0.99] drops all-pass / all-fail)"
    )

    @field_validator("ks")
    @classmethod
    def _distinct_ks(cls, ks: list[int]) -> list[int]:
        if len(set(ks)) != len(ks):
            raise ValueError("ks lists a value twice")
        return sorted(ks)

    @model_validator(mode="after")
    def _ordered_band(self) -> "VoteConfig":
        if self.pass_rate_band is not None and self.pass_rate_band[0] > self.pass_rate_band[1]:
            raise ValueError("pass_rate_band: lo is larger than hi")
        return self

    def build(self) -> "VoteStage":
        return VoteStage(self)


@dataclass
class PromptVote:
    """One prompt's vote; per-sample lists follow the order of the prompt's rows in the batch."""

    answers: list[Answer | None]
    in_majority: list[bool]
    correct: list[bool | None]
    majority: str | None
    agreement: float
    votes: int  # samples in the majority answer class
    pass_rate: float | None
    reference_state: Literal["ok", "missing", "unparsable"]


def answer_classes(answers: list[Answer | None]) -> list[list[int]]:
    """Positions grouped into equivalence classes, each class in order of its first member.

    Equal answer texts are one class without asking math-verify; distinct texts are compared with
    each class's first member (its representative).
    """
    classes: list[list[int]] = []
    by_text: dict[str, list[int]] = {}
    for position, answer in enumerate(answers):
        if answer is None:
            continue
        members = by_text.get(answer.text)
        if members is None:
            members = next((c for c in classes if equivalent(answers[c[0]], answer)), None)
            if members is None:
                members = []
                classes.append(members)
            by_text[answer.text] = members
        members.append(position)
    return classes


def vote(answers: list[Answer | None], written: list[str | None], sample_order: list[int], reference: str | None) -> PromptVote:
    """`written`: each answer as `reference_text` writes it (the majority is the winner's);
    `sample_order` (the sample indices) decides ties: the class holding the earliest sample wins."""
    order = sorted(range(len(answers)), key=lambda p: sample_order[p])
    classes = [[order[i] for i in c] for c in answer_classes([answers[p] for p in order])]
    winner = max(classes, key=len) if classes else []  # max keeps the first of equal sizes
    n = len(answers)
    parsed_reference = parse_reference(reference) if reference is not None and reference.strip() else None
    if parsed_reference is not None:
        verdicts: dict[str, bool] = {}
        correct: list[bool | None] = []
        for answer in answers:
            if answer is None:
                correct.append(False)
            else:
                if answer.text not in verdicts:
                    verdicts[answer.text] = equivalent(parsed_reference, answer)
                correct.append(verdicts[answer.text])
        pass_rate: float | None = sum(correct) / n  # type: ignore[arg-type]
        state: Literal["ok", "missing", "unparsable"] = "ok"
    else:
        correct = [None] * n
        pass_rate = None
        state = "missing" if reference is None or not reference.strip() else "unparsable"
    members = set(winner)
    return PromptVote(
        answers=answers,
        in_majority=[p in members for p in range(n)],
        correct=correct,
        majority=written[winner[0]] if winner else None,
        agreement=len(winner) / n,
        votes=len(winner),
        pass_rate=pass_rate,
        reference_state=state,
    )


class VoteStage(Step):
    def __init__(self, config: VoteConfig):
        self.config = config
        self.label = config.label

    def _schema(self) -> dict[str, pl.DataType]:
        L = self.label
        schema: dict[str, Any] = {
            f"{L}_answer": pl.String,
            f"{L}_majority": pl.String,
            f"{L}_agreement": pl.Float64,
            f"{L}_in_majority": pl.Boolean,
            f"{L}_correct": pl.Boolean,
            f"{L}_n": pl.Int64,
            f"{L}_pass_rate": pl.Float64,
        }
        schema |= {f"{L}_pass_at_{k}": pl.Float64 for k in self.config.ks}
        return schema | {f"{L}_keep": pl.Boolean, f"{L}_reason": pl.String}

    def _reason(self, prompt: PromptVote, position: int) -> str | None:
        c = self.config
        if c.pass_rate_band is not None:
            if prompt.reference_state != "ok":
                return "no_reference" if prompt.reference_state == "missing" else "unparsable_reference"
            lo, hi = c.pass_rate_band
            if not lo <= prompt.pass_rate <= hi:  # type: ignore[operator]
                return "pass_rate_out_of_band"
        if c.min_agreement is not None and prompt.agreement < c.min_agreement:
            return "low_agreement"
        if c.min_votes is not None and prompt.votes < c.min_votes:
            return "too_few_votes"
        if c.keep == "majority":
            if prompt.answers[position] is None:
                return "no_answer"
            if not prompt.in_majority[position]:
                return "minority_answer"
        return None

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        L = self.label
        schema = self._schema()
        columns: dict[str, list[Any]] = {name: [None] * batch.height for name in schema}
        extracted: dict[str, Answer | None] = {}
        written: dict[str, str | None] = {}  # each answer as a later stage would read it as a reference
        completions = batch["completion"].to_list()
        for text in completions:
            if text not in extracted:
                extracted[text] = answer = extract_answer(text)
                written[text] = reference_text(answer) if answer is not None else None
        rows_of: dict[str, list[int]] = {}
        for row, group in enumerate(group_ids(batch).to_list()):  # the samples of one prompt (or of one expanded row)
            rows_of.setdefault(group, []).append(row)
        sample_index = batch["sample_index"].to_list()
        references = batch["reference"].to_list()
        for rows in rows_of.values():
            prompt = vote([extracted[completions[r]] for r in rows], [written[completions[r]] for r in rows], [sample_index[r] for r in rows], references[rows[0]])
            n = len(rows)
            c = sum(1 for ok in prompt.correct if ok)
            for position, row in enumerate(rows):
                reason = self._reason(prompt, position)
                values = {
                    f"{L}_answer": written[completions[row]],
                    f"{L}_majority": prompt.majority,
                    f"{L}_agreement": prompt.agreement,
                    f"{L}_in_majority": prompt.in_majority[position],
                    f"{L}_correct": prompt.correct[position],
                    f"{L}_n": n,
                    f"{L}_pass_rate": prompt.pass_rate,
                    f"{L}_keep": reason is None,
                    f"{L}_reason": reason,
                }
                for k in self.config.ks:
                    values[f"{L}_pass_at_{k}"] = pass_at_k(n, c, k) if prompt.pass_rate is not None and k <= n else None
                for name, value in values.items():
                    columns[name][row] = value
        return batch.with_columns(pl.DataFrame(columns, schema=schema).get_columns())

    def summarize(self, outputs: pl.LazyFrame) -> dict[str, Any]:
        L = self.label
        passes = [f"{L}_pass_at_{k}" for k in self.config.ks]
        seen = outputs.filter(pl.col(f"{L}_keep").is_not_null())
        prompts = (
            seen.with_columns(_group=pl.coalesce("group_id", "prompt_id") if "group_id" in outputs.collect_schema() else pl.col("prompt_id"))
            .group_by("_group")
            .agg(
                pl.col(f"{L}_agreement", f"{L}_pass_rate", *passes).first(),
                pl.col(f"{L}_answer").is_null().sum().alias("no_answer"),
                pl.len().alias("samples"),
                (pl.col(f"{L}_in_majority") & pl.col(f"{L}_correct")).any().alias("majority_right"),
                pl.col(f"{L}_correct").any().alias("some_right"),
            )
            .collect()
        )
        referenced = prompts.filter(pl.col(f"{L}_pass_rate").is_not_null())
        bins = np.digitize(prompts[f"{L}_agreement"].to_numpy(), AGREEMENT_BINS)  # left-closed bins
        histogram = dict(zip(AGREEMENT_BIN_LABELS, map(int, np.bincount(bins, minlength=len(AGREEMENT_BIN_LABELS)))))

        def mean(series: pl.Series) -> float | None:
            value = series.mean()
            return None if value is None else round(float(value), 4)  # type: ignore[arg-type]

        return {
            "prompts": prompts.height,
            "samples": int(prompts["samples"].sum()),
            "samples_without_answer": int(prompts["no_answer"].sum()),
            "mean_agreement": mean(prompts[f"{L}_agreement"]),
            "agreement_histogram": histogram,
            "prompts_with_reference": referenced.height,
            "mean_pass_rate": mean(referenced[f"{L}_pass_rate"]),
            # averaged over the prompts with a reference and at least k samples: pass_at_k_prompts of them
            "pass_at_k": {f"pass@{k}": mean(referenced[f"{L}_pass_at_{k}"]) for k in self.config.ks},
            "pass_at_k_prompts": {f"pass@{k}": int(referenced[f"{L}_pass_at_{k}"].is_not_null().sum()) for k in self.config.ks},
            "majority_accuracy": mean(referenced["majority_right"].cast(pl.Float64)),
            "all_pass": int((referenced[f"{L}_pass_rate"] == 1.0).sum()),
            "all_fail": int((referenced[f"{L}_pass_rate"] == 0.0).sum()),
            # a shared misconception: the vote picked a wrong answer that some sample got right
            "majority_wrong_some_right": int((~referenced["majority_right"] & referenced["some_right"]).sum()),
        }

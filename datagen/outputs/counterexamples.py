"""The targeted set of a counterexample run (format `counterexamples`): one conversation per alive
candidate, with the cluster it targets.

A counterexample row is the new problem as the user turn and its worked solution as the assistant
turn (parsed by the counterexample stage: the prompt that asked for it is not training data); a
correction row is the failed eval prompt with the sample that verified against its expected answer
(math) or passed the case's tests (code). Code rows carry `tests` (the unit tests) and
`tests_passed` (true: they ran in the sandbox and passed; a kept code row always has true).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from datagen.errors import DatagenError
from datagen.llm.generate import MESSAGE

ROLE_COUNTEREXAMPLE, ROLE_CORRECTION = "counterexample", "correction"
PROVENANCE = ("role", "kind", "cluster_id", "cluster_label", "cluster_size", "cluster_severity", "seed_ids", "neighbour_ids", "failure_id",
              "prompt_id", "candidate_id", "template_id", "slots", "seed", "sample_seed", "model", "backend", "sampling")


def counterexample_stage(columns: list[str], stage_labels: list[str]) -> str:
    """The label of the stage that parsed the counterexamples (the one that wrote <label>_problem)."""
    found = [label for label in stage_labels if f"{label}_problem" in columns and f"{label}_solution" in columns]
    if not found:
        raise DatagenError("format counterexamples needs a counterexample stage (it parses the new problems)", field="output.format")
    return found[-1]


def _turn(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(pl.lit(role).alias("role"), content.alias("content"))


def counterexample_rows(candidates: pl.DataFrame, stage_labels: list[str]) -> pl.DataFrame:
    alive = candidates.filter(pl.col("keep"))
    checked = {"messages": pl.List(MESSAGE), "answer": pl.String, "tests": pl.String, "tests_passed": pl.Boolean}
    schema = checked | {c: candidates.schema[c] for c in PROVENANCE if c in candidates.columns}
    if alive.height == 0:
        return pl.DataFrame(schema=schema)
    label = counterexample_stage(candidates.columns, stage_labels)
    rest = [c for c in schema if c not in checked]
    problem, solution, answer = (pl.col(f"{label}_{part}") for part in ("problem", "solution", "answer"))
    own_tests = pl.col(f"{label}_tests") if f"{label}_tests" in alive.columns else pl.lit(None, dtype=pl.String)
    own_passed = pl.col(f"{label}_tests_passed") if f"{label}_tests_passed" in alive.columns else pl.lit(None, dtype=pl.Boolean)
    new = alive.filter((pl.col("role") == ROLE_COUNTEREXAMPLE) & problem.is_not_null()).select(
        pl.concat_list(_turn("user", problem), _turn("assistant", solution)).alias("messages"), answer.alias("answer"),
        own_tests.alias("tests"), own_passed.alias("tests_passed"), *rest,
    )
    # A correction is alive only after its verifier passed it: with tests, they ran and passed.
    given_tests = pl.col("tests") if "tests" in alive.columns else pl.lit(None, dtype=pl.String)
    fixed = alive.filter(pl.col("role") == ROLE_CORRECTION).select(
        pl.concat_list(pl.col("messages"), pl.concat_list(_turn("assistant", pl.col("completion")))).alias("messages"),
        pl.col("reference").alias("answer"),
        given_tests.alias("tests"),
        pl.when(given_tests.is_not_null()).then(pl.lit(True)).otherwise(pl.lit(None, dtype=pl.Boolean)).alias("tests_passed"),
        *rest,
    )
    return pl.concat([new, fixed])


def counterexample_stats(rows: pl.DataFrame) -> dict[str, Any]:
    roles = dict(rows.group_by("role").len().rows()) if rows.height else {}
    return {"rows": rows.height, "counterexamples": int(roles.get(ROLE_COUNTEREXAMPLE, 0)), "corrections": int(roles.get(ROLE_CORRECTION, 0))}

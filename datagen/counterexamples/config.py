"""The recipe's `input` section: where the failures (and the training set) are, and how to cluster them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from datagen.counterexamples.diagnose import DiagnoseConfig
from datagen.paths import ModelRef, RecipePath
from datagen.rows import StrictModel
from datagen.sources.shipped import RESOURCES


MAX_CLUSTERS = 1000  # k-means with silhouette over more clusters than this is a typo, not a plan
DEFAULT_SEVERITY = "severity"
EXAMPLES = RESOURCES / "pipelines" / "examples"
EXAMPLE_FAILURES, EXAMPLE_TRAIN = EXAMPLES / "failures.jsonl", EXAMPLES / "train.jsonl"
# What a failure is embedded as, by kind, when `embed` is not given (see signals.embed_failures).
# Code: where output and expected differ (the failure mode) as text and as the classes of tokens
# that changed (change_kinds: keywords, dropped identifiers, numbers, operators), a little of the
# output; not the prompt (its topic would split one mode by topic). Other kinds: the question and
# the wrong answer. change_kinds 0.7: on the two planted sets in tests/data (three kinds each),
# 0.55 to 1.0 split both exactly by kind for every seed (and from 0.55 to 0.85 k=3 is the best
# silhouette outright); at 0.4 a refactored guard joins the renamed APIs again, at 1.4 a kind splits
# into sub-kinds (`+ 1` vs `<` -> `<=`). 0.7 is the middle of that range.
CODE_WEIGHTS = {"prompt": 0.0, "output": 0.3, "expected": 0.0, "changed_tokens": 1.0, "changed_lines": 0.5, "change_kinds": 0.7}
TEXT_WEIGHTS = {"prompt": 1.0, "output": 1.0, "expected": 0.0, "changed_tokens": 0.0, "changed_lines": 0.0}
EmbedComponent = Literal["prompt", "output", "expected", "changed_tokens", "changed_lines", "change_kinds", "diagnosis"]
DIAGNOSIS_WEIGHTS = {"diagnosis": 1.0}


def _same_file(a: str | Path | None, b: Path) -> bool:
    try:
        return a is not None and Path(a).resolve() == b
    except OSError:
        return False


class InputConfig(StrictModel):
    failures: RecipePath = Field(
        description="Parquet/JSONL of failed eval cases: prompt, output; optional expected, tag, severity, id, kind, tests"
    )
    train: RecipePath | None = Field(
        None,
        description="the existing training set (Parquet/JSONL): neighbours for the seeds, and decontamination; none unless given "
        "(the shipped examples/train.jsonl is used only with the shipped examples/failures.jsonl)",
    )
    kind: Literal["auto", "code", "math", "text"] = Field(
        "auto", description="auto: a failure whose expected answer (or output) is Python defining a function is code; the rest math"
    )
    embed: dict[EmbedComponent, float] | None = Field(
        None, description="weights of what a failure is embedded as (prompt, output, expected, changed_tokens, changed_lines, "
        "change_kinds: the classes of tokens a code fix changes); "
        "default by kind: code weighs where output and expected differ, other kinds the prompt and output; diagnosis needs `diagnose`"
    )
    diagnose: DiagnoseConfig | None = Field(
        None, description="a model writes a one-line diagnosis of each failure, and the diagnoses are clustered (weights: "
        "diagnosis 1 unless embed is given)"
    )
    k_seeds: int = Field(5, ge=1, le=50, description="k-means seeds whose silhouettes are averaged for each k")
    k_tolerance: float = Field(
        0.01, ge=0.0, le=1.0, description="the smallest k whose mean silhouette is within this of the best is chosen"
    )
    k: int | None = Field(None, ge=1, le=MAX_CLUSTERS, description="number of clusters; chosen by silhouette within k_range when unset")
    k_range: tuple[int, int] = Field((2, 8), description="[lo, hi] tried for k, inclusive")
    seeds_per_cluster: int = Field(3, ge=1, le=20, description="failures shown in each counterexample prompt")
    neighbours: int = Field(3, ge=0, le=20, description="training examples nearest the cluster shown in each prompt")
    text_column: str = Field("prompt", min_length=1, description="the column holding the prompt text (failures and training set)")
    severity_column: str = Field(
        DEFAULT_SEVERITY, min_length=1, description="per-failure weight (>= 0); 1 where the column is absent (a column named "
        "other than 'severity' must exist)"
    )
    correction_share: float = Field(
        0.25, ge=0.0, le=1.0, description="share of a cluster's budget spent re-solving its own failures that have an `expected`"
    )
    embedding_model: ModelRef = Field("default", description="sentence-transformers model; default: the packaged all-MiniLM-L6-v2")
    counterexample_template: str = Field("counterexamples", pattern=r"^[A-Za-z0-9_.-]+$")
    correction_template: str | None = Field("corrections", pattern=r"^[A-Za-z0-9_.-]+$", description="null: no corrections")
    code_counterexample_template: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$",
        description="new tasks for code clusters (shipped: counterexamples_code); null: code clusters use counterexample_template"
    )
    code_correction_template: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$",
        description="code failures with `tests` asked again, checked by them (shipped: corrections_code); null: no code corrections",
    )

    @field_validator("embed")
    @classmethod
    def _weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        for name, weight in value.items():
            if not (weight >= 0 and weight < float("inf")):
                raise ValueError(f"embed.{name}: a weight must be finite and >= 0 (got {weight})")
        if not any(w > 0 for w in value.values()):
            raise ValueError("embed: at least one weight must be > 0")
        return value

    @model_validator(mode="after")
    def _diagnosis_needs_diagnose(self) -> "InputConfig":
        if self.embed and self.embed.get("diagnosis", 0) > 0 and self.diagnose is None:
            raise ValueError("embed.diagnosis: needs input.diagnose (the model that writes the diagnoses)")
        return self

    @model_validator(mode="after")
    def _example_train_only_for_example_failures(self) -> "InputConfig":
        # The recipe's example training set is not a user's: it never becomes their neighbours.
        if _same_file(self.train, EXAMPLE_TRAIN) and not _same_file(self.failures, EXAMPLE_FAILURES):
            self.train = None
        return self

    def weights(self, code: bool) -> dict[str, float]:
        """The embedding weights for a file of code failures (code=True) or of other failures."""
        if self.embed is not None:
            return dict(self.embed)
        if self.diagnose is not None:
            return dict(DIAGNOSIS_WEIGHTS)
        return dict(CODE_WEIGHTS if code else TEXT_WEIGHTS)

    @field_validator("k_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        lo, hi = value
        if lo < 2:
            raise ValueError("k_range: the silhouette needs at least 2 clusters, so lo must be >= 2")
        if lo > hi:
            raise ValueError(f"k_range: lo ({lo}) is larger than hi ({hi})")
        if hi > MAX_CLUSTERS:
            raise ValueError(f"k_range: hi ({hi}) is more than {MAX_CLUSTERS} clusters")
        return value

    @property
    def severity_required(self) -> bool:
        """A severity column the user named (other than the default name) must exist; `severity` may be absent."""
        return self.severity_column != DEFAULT_SEVERITY

    def files(self) -> list[Path]:
        return [Path(p) for p in (self.failures, self.train) if p]

    def templates(self) -> list[str]:
        """Every template the expansion may use (which ones it does depends on the failures' kinds)."""
        names = (self.counterexample_template, self.correction_template, self.code_counterexample_template, self.code_correction_template)
        return [t for t in names if t]

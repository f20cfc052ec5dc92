"""The recipe's `input` section: where the failures (and the training set) are, and how to cluster them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from datagen.paths import ModelRef, RecipePath
from datagen.schema import StrictModel


MAX_CLUSTERS = 1000  # k-means with silhouette over more clusters than this is a typo, not a plan


class InputConfig(StrictModel):
    failures: RecipePath = Field(description="Parquet/JSONL of failed eval cases: prompt, output; optional expected, tag, severity, id")
    train: RecipePath | None = Field(None, description="the existing training set (Parquet/JSONL): neighbours for the seeds, and decontamination")
    k: int | None = Field(None, ge=1, le=MAX_CLUSTERS, description="number of clusters; chosen by silhouette within k_range when unset")
    k_range: tuple[int, int] = Field((2, 8), description="[lo, hi] tried for k, inclusive")
    seeds_per_cluster: int = Field(3, ge=1, le=20, description="failures shown in each counterexample prompt")
    neighbours: int = Field(3, ge=0, le=20, description="training examples nearest the cluster shown in each prompt")
    text_column: str = Field("prompt", min_length=1, description="the column holding the prompt text (failures and training set)")
    severity_column: str = Field("severity", min_length=1, description="per-failure weight (>= 0); 1 where the column is absent")
    correction_share: float = Field(
        0.25, ge=0.0, le=1.0, description="share of a cluster's budget spent re-solving its own failures that have an `expected`"
    )
    embedding_model: ModelRef = Field("default", description="sentence-transformers model; default: the packaged all-MiniLM-L6-v2")
    counterexample_template: str = Field("counterexamples", pattern=r"^[A-Za-z0-9_.-]+$")
    correction_template: str | None = Field("corrections", pattern=r"^[A-Za-z0-9_.-]+$", description="null: no corrections")

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
        """A severity column the user named must exist; the default one may be absent."""
        return "severity_column" in self.model_fields_set

    def files(self) -> list[Path]:
        return [Path(p) for p in (self.failures, self.train) if p]

    def templates(self) -> list[str]:
        return [t for t in (self.counterexample_template, self.correction_template) if t]

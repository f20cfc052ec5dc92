"""How the output rows are built from the annotated candidates: the `output.pairs` section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from datagen.rows import StrictModel

Strategy = Literal["verified", "score_margin", "pairwise", "critique_revision", "correction", "majority"]
# The stage whose columns decide the pairs, unless `stage:` names another one.
DEFAULT_STAGE: dict[str, str] = {"verified": "verify", "score_margin": "judge", "pairwise": "judge", "critique_revision": "revise", "correction": "verify", "majority": "vote"}
# The stage kind a strategy needs (verified reads any stage's <label>_keep; score_margin any score column).
NEEDS_KIND: dict[str, str] = {"pairwise": "judge", "critique_revision": "revise", "majority": "vote"}


class PairsConfig(StrictModel):
    strategy: Strategy = "verified"
    stage: str | None = Field(None, description="label of the stage whose verdicts decide the pairs; default by strategy")
    pairs_per_prompt: int = Field(1, ge=1)
    min_margin: float = Field(1.0, ge=0, description="score_margin: chosen score minus rejected score, at least (and always above 0)")
    score_column: str | None = Field(None, description="score_margin: the score to compare; default <stage>_score")
    max_length_ratio: float | None = Field(None, ge=1.0, description="longer side / shorter side, in characters, at most")
    style: Literal["conversational", "standard"] = Field(
        "conversational", description="conversational: message lists (TRL's default); standard: plain strings"
    )
    near_duplicate_threshold: float = Field(
        0.9, gt=0.0, le=1.0, description="sides whose token-shingle Jaccard similarity reaches this are never paired"
    )
    shingle_size: int = Field(5, ge=1, le=32, description="tokens per shingle for the near-duplicate check (words, or characters in scripts without spaces)")

    @model_validator(mode="after")
    def _fits_strategy(self) -> "PairsConfig":
        if self.strategy != "score_margin":
            if self.min_margin != 1.0 or self.score_column is not None:
                field = "score_column" if self.score_column is not None else "min_margin"
                raise ValueError(f"{field} only applies to strategy: score_margin")
        return self

    @property
    def stage_label(self) -> str:
        return self.stage or DEFAULT_STAGE[self.strategy]

    @property
    def score(self) -> str:
        return self.score_column or f"{self.stage_label}_score"

    def check_stages(self, stages: list[Any]) -> None:
        """The deciding stage must be in the recipe, of a kind that yields what the strategy reads."""
        by_label = {stage.label: stage for stage in stages}
        stage = by_label.get(self.stage_label)
        if stage is None:
            known = ", ".join(by_label) or "none"
            raise ValueError(f"output.pairs: strategy {self.strategy} reads the stage {self.stage_label!r}, which the recipe does not have (stages: {known}); add it or set output.pairs.stage")
        kind = NEEDS_KIND.get(self.strategy)
        if kind is not None and stage.stage != kind:
            raise ValueError(f"output.pairs: strategy {self.strategy} needs a {kind} stage; {self.stage_label!r} is a {stage.stage} stage")
        mode = getattr(stage, "mode", None)
        if self.strategy == "pairwise" and mode != "pairwise":
            raise ValueError(f"output.pairs: strategy pairwise needs the judge {self.stage_label!r} in mode: pairwise")
        if self.strategy == "score_margin" and self.score_column is None and (stage.stage != "judge" or mode != "pointwise"):
            raise ValueError(f"output.pairs: {self.score!r} is not a score column; score_margin needs a pointwise judge or a score_column")

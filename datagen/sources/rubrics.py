"""Judge rubrics: criteria with 1-5 anchors, loaded from YAML and checked before any model runs."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from datagen.rows import StrictModel
from datagen.sources.shipped import RESOURCES, ShippedYaml, first_repeat

# Shipped rubrics, next to the package in the repository (the package is installed editable).
RUBRIC_DIR = RESOURCES / "filters" / "rubrics"
SCALE = (1, 2, 3, 4, 5)
# Criterion names become columns `<label>_<name>`; these suffixes are the judge's own columns.
RESERVED_NAMES = frozenset(
    {"keep", "reason", "score", "rationale", "error", "wins", "losses", "ties", "errors", "win_rate", "comparisons"}
)


class Criterion(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    description: str = Field(min_length=1)
    anchors: dict[int, str] = Field(description="what a score of 1, 2, 3, 4 and 5 looks like")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved for the judge's own columns")
        return name

    @field_validator("anchors")
    @classmethod
    def _one_to_five(cls, anchors: dict[int, str]) -> dict[int, str]:
        if sorted(anchors) != list(SCALE):
            raise ValueError(f"needs exactly the anchors 1, 2, 3, 4, 5 (got {sorted(anchors)})")
        blank = [score for score, text in anchors.items() if not text.strip()]
        if blank:
            raise ValueError(f"anchor {blank[0]} is empty")
        return dict(sorted(anchors.items()))


class Rubric(StrictModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    criteria: list[Criterion] = Field(min_length=1)
    # criterion -> weight in the overall score; unlisted criteria weigh 1.
    weights: dict[str, float] = Field(default_factory=dict)

    @field_validator("criteria")
    @classmethod
    def _unique_names(cls, criteria: list[Criterion]) -> list[Criterion]:
        if (twice := first_repeat(c.name for c in criteria)) is not None:
            raise ValueError(f"criterion {twice!r} is listed twice")
        return criteria

    @field_validator("weights")
    @classmethod
    def _weights_name_criteria(cls, weights: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        criteria = info.data.get("criteria")
        if criteria is None:  # the criteria themselves failed; that error is reported instead
            return weights
        names = [c.name for c in criteria]
        for name, weight in weights.items():
            if name not in names:
                raise ValueError(f"{name!r} is not a criterion (criteria: {', '.join(names)})")
            if weight < 0:
                raise ValueError(f"the weight of {name!r} is negative")
        if sum(weights.get(name, 1.0) for name in names) <= 0:
            raise ValueError("at least one criterion needs a positive weight")
        return weights

    def weight(self, name: str) -> float:
        return self.weights.get(name, 1.0)

    def weighted_score(self, scores: dict[str, int]) -> float:
        total = sum(self.weight(c.name) for c in self.criteria)
        return sum(self.weight(c.name) * scores[c.name] for c in self.criteria) / total

    def render(self) -> str:
        """The rubric as the judge reads it."""
        lines = [f"Rubric: {self.id}"]
        if self.description:
            lines.append(self.description.strip())
        for c in self.criteria:
            lines.append("")
            lines.append(f"Criterion `{c.name}`: {c.description.strip()}")
            lines.extend(f"  {score} = {text.strip()}" for score, text in c.anchors.items())
        return "\n".join(lines)


RUBRICS = ShippedYaml("rubric", RUBRIC_DIR, Rubric)
# A shipped rubric's name (`helpfulness`) or a path to a YAML file (in a recipe, relative to the recipe file).
shipped_rubrics, rubric_path, load_rubric = RUBRICS.names, RUBRICS.path, RUBRICS.load

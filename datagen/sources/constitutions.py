"""Constitutions for the revise stage: principles, each a critique request and a revision request."""

from __future__ import annotations

from pydantic import Field, field_validator

from datagen.rows import StrictModel
from datagen.sources.shipped import RESOURCES, ShippedYaml, first_repeat

# Shipped constitutions, next to the package in the repository (the package is installed editable).
CONSTITUTION_DIR = RESOURCES / "filters" / "constitutions"


class Principle(StrictModel):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    critique: str = Field(min_length=1, description="what the model looks for in its own answer")
    revision: str = Field(min_length=1, description="how the model rewrites the answer to fix what the critique found")


class Constitution(StrictModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    principles: list[Principle] = Field(min_length=1)

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, principles: list[Principle]) -> list[Principle]:
        if (twice := first_repeat(p.id for p in principles)) is not None:
            raise ValueError(f"principle {twice!r} is listed twice")
        return principles


CONSTITUTIONS = ShippedYaml("constitution", CONSTITUTION_DIR, Constitution)
# A shipped constitution's name (`hhh`) or a path to a YAML file (in a recipe, relative to the recipe file).
shipped_constitutions, constitution_path, load_constitution = CONSTITUTIONS.names, CONSTITUTIONS.path, CONSTITUTIONS.load

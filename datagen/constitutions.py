"""Constitutions for the revise stage: principles, each a critique request and a revision request."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from datagen.errors import DatagenError, from_validation_error
from datagen.schema import StrictModel
from datagen.yaml_io import read_yaml

# Shipped constitutions, next to the package in the repository (the package is installed editable).
CONSTITUTION_DIR = Path(__file__).resolve().parent.parent / "filters" / "constitutions"


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
        seen: set[str] = set()
        for principle in principles:
            if principle.id in seen:
                raise ValueError(f"principle {principle.id!r} is listed twice")
            seen.add(principle.id)
        return principles


def shipped_constitutions() -> list[str]:
    return sorted(p.stem for p in CONSTITUTION_DIR.glob("*.yaml"))


def constitution_path(ref: str) -> Path:
    """A shipped constitution's name (`hhh`) or a path to a YAML file (relative to the working dir)."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        return Path(ref).expanduser()
    path = CONSTITUTION_DIR / f"{ref}.yaml"
    if not path.is_file():
        shipped = ", ".join(shipped_constitutions()) or "none"
        raise DatagenError(f"no shipped constitution {ref!r} (shipped: {shipped}; or give a path to a .yaml file)", field="constitution")
    return path


def load_constitution(ref: str | Path) -> Constitution:
    path = Path(ref) if isinstance(ref, Path) else constitution_path(ref)
    data = read_yaml(path, "constitution file")
    try:
        return Constitution.model_validate(data)
    except ValidationError as err:
        raise from_validation_error(err, path) from None

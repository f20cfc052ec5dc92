"""YAML resources that ship in a folder under filters/ (rubrics, constitutions): named by their file
stem, or given as a path to a YAML file, and validated into their pydantic model. In a recipe the
path is relative to the recipe file (see datagen.paths); elsewhere to the working directory.
Shipped recipes are named the same way (`datagen run quickstart`, `recipe_file`)."""

from __future__ import annotations

from pathlib import Path
from typing import Generic, Iterable, TypeVar

from pydantic import BaseModel, ValidationError

from datagen.errors import DatagenError, from_validation_error
from datagen.paths import names_a_file
from datagen.yaml_io import read_yaml

# The recipes, templates, rubrics and constitutions that ship inside the package (package data, so a
# non-editable install has them too); the repository's pipelines/, templates/, filters/ link here.
RESOURCES = Path(__file__).resolve().parents[1] / "resources"
PIPELINES = RESOURCES / "pipelines"

Model = TypeVar("Model", bound=BaseModel)


def first_repeat(names: Iterable[str]) -> str | None:
    """The first name that occurs a second time, if any: entries of a shipped file are keyed by name."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


class ShippedYaml(Generic[Model]):
    def __init__(self, kind: str, directory: Path, model: type[Model]):
        self.kind, self.directory, self.model = kind, directory, model

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.yaml"))

    def path(self, ref: str) -> Path:
        """A shipped resource's name or a path to a YAML file."""
        if names_a_file(ref):
            return Path(ref).expanduser()
        path = self.directory / f"{ref}.yaml"
        if not path.is_file():
            shipped = ", ".join(self.names()) or "none"
            raise DatagenError(f"no shipped {self.kind} {ref!r} (shipped: {shipped}; or give a path to a .yaml file)", field=self.kind)
        return path

    def load(self, ref: str | Path) -> Model:
        path = Path(ref) if isinstance(ref, Path) else self.path(ref)
        data = read_yaml(path, f"{self.kind} file")
        try:
            return self.model.model_validate(data)
        except ValidationError as err:
            raise from_validation_error(err, path) from None


def shipped_recipes() -> dict[str, str]:
    """Name -> first line of the description of every shipped recipe (datagen/resources/pipelines)."""
    found = {}
    for path in sorted(PIPELINES.glob("*.yaml")):
        data = read_yaml(path, "recipe file")
        text = str(data.get("description") or "").strip() if isinstance(data, dict) else ""
        found[path.stem] = text.splitlines()[0] if text else ""
    return found


def recipe_file(ref: str | Path) -> Path:
    """The recipe file `ref` names: a path as it is when it exists or looks like one (a '/' or a
    .yaml/.yml suffix), else the shipped recipe of that name (`quickstart`).

    Raises DatagenError: a bare name that is neither a file here nor a shipped recipe."""
    path = Path(ref).expanduser()
    if path.exists() or names_a_file(str(ref)):
        return path
    shipped = PIPELINES / f"{ref}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(p.stem for p in sorted(PIPELINES.glob("*.yaml"))) or "none"
    raise DatagenError(f"no such file, and no shipped recipe of that name (shipped: {names}; `datagen recipes` lists them)", path)

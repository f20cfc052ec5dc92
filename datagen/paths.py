"""Path-valued config fields, and where a relative path in them starts from.

A relative path written in a recipe file is relative to that file's folder; one given on the
command line (`--set`) is relative to the working directory, as a shell user expects. `~` is
expanded and absolute paths are kept. The recipe loader passes the recipe's folder as the
validation context (`BASE_DIR`) and marks `--set` values as `CommandLineText`; a field opts in by
its type (`RecipePath`, `InputFile`, `ShippedOrFile`), so a new stage's path fields need nothing
else. Outside a recipe (a config built in Python) relative paths are left to the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo

BASE_DIR = "base_dir"  # validation context key: the folder of the recipe file being loaded


class CommandLineText(str):
    """A string given with --set: a relative path in it starts from the working directory.

    Pydantic turns it into a plain `str` wherever a field is typed `str`."""


def command_line_value(value: Any) -> Any:
    """`value` (a parsed --set value) with every string in it marked as given on the command line."""
    if isinstance(value, str):
        return CommandLineText(value)
    if isinstance(value, list):
        return [command_line_value(v) for v in value]
    if isinstance(value, dict):
        return {k: command_line_value(v) for k, v in value.items()}
    return value


def _base(value: str, info: ValidationInfo) -> Path | None:
    if isinstance(value, CommandLineText):
        return Path.cwd()
    base = (info.context or {}).get(BASE_DIR)
    return Path(base).resolve() if base is not None else None


def anchor(value: Any, info: ValidationInfo) -> Any:
    """A path made absolute against its base (the recipe's folder or the working directory)."""
    if not isinstance(value, str) or not value:
        return value  # the field's own type reports what is wrong
    expanded = os.path.expanduser(value)
    base = _base(value, info)
    if os.path.isabs(expanded) or base is None:
        return expanded
    return os.path.normpath(base / expanded)


def anchor_file(value: Any, info: ValidationInfo) -> Any:
    """`anchor`, and, when a recipe is loaded, the file must exist: the error then names the
    recipe and the field, before any model runs."""
    path = anchor(value, info)
    loading = isinstance(value, CommandLineText) or BASE_DIR in (info.context or {})
    if isinstance(path, str) and path and loading:
        if not os.path.exists(path):
            raise ValueError(f"file not found: {path}")
        if not os.path.isfile(path):
            raise ValueError(f"not a file: {path}")
    return path


def names_a_file(ref: str) -> bool:
    """A shipped file's name (`helpfulness`) or a path: a path ends in .yaml/.yml or holds a '/'."""
    return ref.endswith((".yaml", ".yml")) or "/" in ref


def anchor_file_or_name(value: Any, info: ValidationInfo) -> Any:
    return anchor_file(value, info) if isinstance(value, str) and names_a_file(value) else value


def is_local_model_path(ref: str) -> bool:
    """A model reference that can only be a local path: hub ids look like 'org/name'."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1


def anchor_model(value: Any, info: ValidationInfo) -> Any:
    """A model that is a local path is anchored (existence is checked by `datagen validate` and
    `run`, so that a recipe still loads for `preview` where the model is absent)."""
    return anchor(value, info) if isinstance(value, str) and is_local_model_path(value) else value


# A file or folder, read or written (output.dir, template_dirs).
RecipePath = Annotated[str, BeforeValidator(anchor)]
# A file that is read: it must exist when the recipe is loaded.
InputFile = Annotated[str, BeforeValidator(anchor_file)]
# Put on a `Spec | str` union: a shipped file's name, a path to a YAML file, or the spec inline.
ShippedOrFile = BeforeValidator(anchor_file_or_name)
# 'embedded'/'default', a hub id, or a local model folder.
ModelRef = Annotated[str, BeforeValidator(anchor_model)]

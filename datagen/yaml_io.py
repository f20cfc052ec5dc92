"""Reading YAML files with errors that point at the file, line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from datagen.errors import DatagenError


def read_yaml(path: Path, what: str = "file") -> Any:
    if not path.exists():
        raise DatagenError(f"{what} not found", path)
    if not path.is_file():
        raise DatagenError(f"{what} is not a regular file", path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatagenError(f"not valid UTF-8 (byte {err.start})", path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        place = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = err.problem or err.context or "invalid YAML"
        raise DatagenError(f"YAML syntax error: {problem}", place) from None
    except yaml.YAMLError as err:
        raise DatagenError(f"YAML error: {err}", path) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise DatagenError(f"expected a mapping at the top level, found {kind}", path)
    return data

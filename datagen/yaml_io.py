"""Reading YAML files with YAML 1.2 core-schema rules, bounded size, depth and aliases, and errors
that point at the file, line and column.

PyYAML implements YAML 1.1, whose implicit types silently turn unquoted text into something else:
`1:45` into 105 (base 60), `012` into 10 (octal), `yes`/`no`/`on`/`off` into booleans,
`2026-11-29` into a date, `1_000` into 1000. datagen reads every recipe, template and `--set`
value with the YAML 1.2 core schema instead (https://yaml.org/spec/1.2.2/#1032-tag-resolution):
only `true`/`false`, `null`/`~`, decimal, `0o` octal and `0x` hex integers, decimals with an
optional exponent, `.inf` and `.nan` are anything but strings. So `1:45`, `yes`, `2026-11-29`
and `1_000` stay the text that was written. A template's slot values go one step further
(`written_numbers`): an unquoted number whose text is not how the number prints (`012`, `0x1F`,
`+5`, `1e3`, `2.50`, `.inf`) is refused with a line asking to quote it, because a prompt would
show another text than the one written.

Bounds (a YAML file is untrusted input): files up to MAX_FILE_BYTES, nesting up to MAX_DEPTH,
at most MAX_ALIASES aliases and MAX_NODES nodes once every alias is expanded (an alias bomb is
small as a graph but exponential as data, as soon as anything walks it).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from datagen.errors import DatagenError

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_NODES = 1_000_000  # nodes of the document with every alias expanded

_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")
_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")
_NULL = re.compile(r"~|null|Null|NULL|")


class WrittenInt(int):
    """An int read from text that does not print as it was written (`012`, `0x1F`, `+5`)."""

    text: str


class WrittenFloat(float):
    """A float read from text that does not print as it was written (`1e3`, `2.50`, `.inf`)."""

    text: str


class _Limits(yaml.SafeLoader):
    """SafeLoader (no Python objects) with bounded depth and aliases."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and self._aliases and _expanded_size(node, {}) > MAX_NODES:
            raise yaml.YAMLError(f"more than {MAX_NODES} values once its aliases (*name) are expanded")
        return node

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name) in one document")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node, sizes: dict[int, int]) -> int:
    """Nodes under `node` counting every alias as a copy; memoized per node (the graph's depth is bounded)."""
    key = id(node)
    if sizes.get(key) == -1:
        raise yaml.YAMLError("an alias (*name) refers to a node that holds it")
    if key not in sizes:
        sizes[key] = -1  # in progress
        if isinstance(node, yaml.SequenceNode):
            sizes[key] = 1 + sum(_expanded_size(child, sizes) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            sizes[key] = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
        else:
            sizes[key] = 1
        sizes[key] = min(sizes[key], MAX_NODES + 1)
    return sizes[key]


class CoreLoader(_Limits):
    """YAML 1.2 core schema: implicit types are only null, bool, int (decimal, 0o, 0x) and float."""

    yaml_implicit_resolvers: dict = {}
    written_numbers = False  # return WrittenInt/WrittenFloat for numbers that do not print as written

    def construct_core_int(self, node) -> int:
        text = self.construct_scalar(node)
        value = int(text[2:], 8) if text.startswith("0o") else int(text[2:], 16) if text.startswith("0x") else int(text, 10)
        return self._written(WrittenInt, value, text) if self.written_numbers and str(value) != text else value

    def construct_core_float(self, node) -> float:
        text = self.construct_scalar(node)
        lower = text.lower().lstrip("+")
        value = (-math.inf if lower.startswith("-") else math.inf) if lower.lstrip("-") == ".inf" else math.nan if lower == ".nan" else float(text)
        return self._written(WrittenFloat, value, text) if self.written_numbers and repr(value) != text else value

    @staticmethod
    def _written(kind, value, text):
        number = kind(value)
        number.text = text
        return number


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", _BOOL, list("tTfF")),
    ("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
    ("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789")),
):
    CoreLoader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern.pattern})$"), _first)
CoreLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
CoreLoader.add_constructor("tag:yaml.org,2002:int", CoreLoader.construct_core_int)
CoreLoader.add_constructor("tag:yaml.org,2002:float", CoreLoader.construct_core_float)


class WrittenNumbersLoader(CoreLoader):
    written_numbers = True


def parse_yaml(text: str, source: str | Path, written_numbers: bool = False) -> Any:
    """`text` as YAML 1.2 core schema (see the module docstring); raises DatagenError naming
    `source` (with line and column for syntax errors)."""
    loader = (WrittenNumbersLoader if written_numbers else CoreLoader)(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        place = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else str(source)
        problem = err.problem or err.context or "invalid YAML"
        raise DatagenError(f"YAML syntax error: {problem}", place) from None
    except yaml.YAMLError as err:
        raise DatagenError(f"YAML error: {err}", source) from None
    except (ValueError, RecursionError) as err:  # e.g. !!int on text that is no number
        raise DatagenError(f"YAML error: {err}", source) from None
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str = "file", written_numbers: bool = False) -> Any:
    """A YAML file holding a mapping (see parse_yaml); raises DatagenError naming the file."""
    if not path.exists():
        raise DatagenError(f"{what} not found", path)
    if not path.is_file():
        raise DatagenError(f"{what} is not a regular file", path)
    with open(path, "rb") as fh:
        raw = fh.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise DatagenError(f"{what} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatagenError(f"not valid UTF-8 (byte {err.start})", path) from None
    data = parse_yaml(text, path, written_numbers)
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise DatagenError(f"expected a mapping at the top level, found {kind}", path)
    return data

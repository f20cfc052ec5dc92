"""The one JSON loader for text a model wrote (the json_schema verifier, judge verdicts).

Strict where Python's `json` is lenient, so that what passes here is JSON every other parser
reads the same way (RFC 8259):
- NaN, Infinity and -Infinity are refused anywhere in the document, nested ones too; so are
  numbers too large for a float (1e999 would become infinity);
- a duplicate key in an object is refused: parsers disagree on which value wins (Python keeps the
  last, others the first or fail), so such a document has no single meaning.
Errors are `ValueError` (json.JSONDecodeError for syntax) with a one-line message.
"""

from __future__ import annotations

import json
import math
from typing import Any


class StrictJSONError(ValueError):
    """JSON that parses leniently but is not strict JSON (non-finite number, duplicate key)."""


def _constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"{text} is out of the range of a JSON number")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"duplicate key {key!r} in an object")
        result[key] = value
    return result


def loads(text: str | bytes) -> Any:
    """Parse one JSON document strictly (see the module docstring).

    Raises ValueError (json.JSONDecodeError on a syntax error, StrictJSONError on a non-finite
    number or a duplicate key)."""
    return json.loads(text, parse_constant=_constant, parse_float=_finite, object_pairs_hook=_unique_keys)

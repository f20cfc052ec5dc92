"""User-facing errors: one line that names the file and field (or the cause)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError


class DatagenError(Exception):
    """An error caused by the user's input. The CLI prints it as one line and exits 2."""

    def __init__(self, message: str, source: str | Path | None = None, field: str | None = None):
        self.message = message
        self.source = str(source) if source is not None else None
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.source, self.field) if part)
        return f"{where}: {self.message}" if where else self.message


def first_line(err: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message (default: its type's name when it has none), for
    one-line reports of errors raised by libraries."""
    return (str(err).strip().splitlines() or [type(err).__name__ if default is None else default])[0]


def _loc_to_path(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            # Discriminated unions add the tag (e.g. 'length') as a location element; keep it,
            # it tells the user which stage's config is wrong.
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def expected_tags(error: dict) -> list[str]:
    """The kinds a `union_tag_invalid` pydantic error accepts (its ctx gives them as "'a', 'b'")."""
    return re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected_tags", "")))


def from_validation_error(err: ValidationError, source: str | Path | None) -> DatagenError:
    """Collapse a pydantic error into one line naming the first offending field."""
    first = err.errors()[0]
    field = _loc_to_path(tuple(first.get("loc", ()))) or None
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    elif first.get("type") == "union_tag_invalid":  # `kind: maths`, `stage: lenght`
        ctx = first.get("ctx") or {}
        message = f"unknown {str(ctx.get('discriminator', 'kind')).strip(chr(39))} {ctx.get('tag')!r} (one of {', '.join(expected_tags(first))})"
    elif "input" in first and first.get("type") not in ("missing",) and not isinstance(first["input"], (dict, list)):
        message = f"{message} (got {first['input']!r})"
    more = len(err.errors()) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return DatagenError(message, source, field)

"""Reading and checking the failures file (and the training set) into frames of known columns.

Every problem is a DatagenError naming the file and the column, and the first bad row where
there is one, so the CLI reports it as one line.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from datagen.errors import DatagenError
from datagen.steps.dedup import read_table, text_column

OUTPUT_COLUMN, EXPECTED_COLUMN, TAG_COLUMN, ID_COLUMN = "output", "expected", "tag", "id"
KIND_COLUMN, TESTS_COLUMN = "kind", "tests"
KINDS = ("code", "math", "text")
FAILURE_SCHEMA = {
    "failure_id": pl.String,
    "prompt": pl.String,
    "output": pl.String,
    "expected": pl.String,
    "tag": pl.String,
    "severity": pl.Float64,
    "kind": pl.String,  # code | math | text: which templates and checks its cluster gets
    "tests": pl.String,  # code: asserts (the python_tests format) the expected code passes and the output fails
}
TRAIN_SCHEMA = {"train_id": pl.String, "prompt": pl.String}


def _missing(frame: pl.DataFrame, column: str, path: Path) -> DatagenError:
    return DatagenError(f"missing column (the file has: {', '.join(frame.columns)})", path, column)


def _first_row(mask: pl.Series) -> int:
    """1-based number of the first row where `mask` is true (what a user sees in an editor)."""
    return int(mask.arg_true()[0]) + 1


def _text(frame: pl.DataFrame, column: str, path: Path, *, required: bool, numbers_ok: bool = False) -> pl.Series | None:
    """A text column as String; required ones must exist and be non-blank in every row. With
    `numbers_ok` a numeric column is accepted and written as text (an `expected` of 19, an `id` of 7)."""
    if column not in frame.columns:
        if required:
            raise _missing(frame, column, path)
        return None
    series = frame[column]
    if numbers_ok and series.dtype.is_numeric():
        series = series.cast(pl.String)
    else:
        # The shared text-column rules (dedup.text_column): dictionary-encoded text (pandas
        # "category", polars Categorical/Enum) is text; other types, and a JSONL column mixing
        # strings with numbers or objects, are refused naming the first such row.
        series = text_column(frame, column, path, column)
    blank = series.is_null() | (series.str.strip_chars() == "")
    if required and blank.any():
        raise DatagenError(f"row {_first_row(blank)} is empty", path, column)
    return series.set(blank, None)


def _ids(frame: pl.DataFrame, path: Path, prefix: str) -> pl.Series:
    """The `id` column when there is one (unique, non-empty), else the 1-based row number."""
    if ID_COLUMN not in frame.columns:
        return pl.Series([f"{prefix}{i + 1}" for i in range(frame.height)], dtype=pl.String)
    ids = _text(frame, ID_COLUMN, path, required=True, numbers_ok=True)
    duplicated = ids.is_duplicated()
    if duplicated.any():
        row = _first_row(duplicated)
        raise DatagenError(f"duplicate id {ids[row - 1]!r} (row {row})", path, ID_COLUMN)
    return ids


def _severity(frame: pl.DataFrame, column: str, path: Path, required: bool) -> pl.Series:
    if column not in frame.columns:
        if required:
            raise _missing(frame, column, path)
        return pl.Series([1.0] * frame.height, dtype=pl.Float64)
    series = frame[column]
    if series.dtype == pl.Null:
        return pl.Series([1.0] * frame.height, dtype=pl.Float64)
    if not series.dtype.is_numeric():
        raise DatagenError(f"holds {series.dtype}, not numbers", path, column)
    values = series.cast(pl.Float64).fill_null(1.0)
    bad = pl.Series([not (math.isfinite(v) and v >= 0) for v in values], dtype=pl.Boolean)
    if bad.any():
        row = _first_row(bad)
        raise DatagenError(f"row {row}: severity must be a finite number >= 0 (got {values[row - 1]})", path, column)
    return values


def _kinds(frame: pl.DataFrame, path: Path, kind: str, outputs: list[str | None], expected: list[str | None]) -> pl.Series:
    """`kind` given (not auto): every failure is of it; else a `kind` column where a row has one;
    else detected: code when the expected answer (or, without one, the output) is Python defining
    a function or class, math otherwise."""
    from datagen.counterexamples.signals import is_code_failure

    if kind != "auto":
        return pl.Series([kind] * frame.height, dtype=pl.String)
    given = _text(frame, KIND_COLUMN, path, required=False)
    given_list = given.to_list() if given is not None else [None] * frame.height
    kinds = []
    for row, (value, out, exp) in enumerate(zip(given_list, outputs, expected), start=1):
        if value is not None and value.strip().lower() not in KINDS:
            raise DatagenError(f"row {row}: kind must be one of {', '.join(KINDS)} (got {value!r})", path, KIND_COLUMN)
        kinds.append(value.strip().lower() if value is not None else "code" if is_code_failure(out, exp) else "math")
    return pl.Series(kinds, dtype=pl.String)


def read_failures(
    path: str | Path, text_column: str = "prompt", severity_column: str = "severity", severity_required: bool = False, kind: str = "auto"
) -> pl.DataFrame:
    """failure_id, prompt, output, expected (null where unknown), tag, severity (1.0 by default),
    kind (see _kinds), tests (null where none). Only the prompt and output columns are required."""
    path = Path(path)
    frame = read_table(path, "failures")
    prompt = _text(frame, text_column, path, required=True)
    output = _text(frame, OUTPUT_COLUMN, path, required=True)
    expected = _text(frame, EXPECTED_COLUMN, path, required=False, numbers_ok=True)
    tag = _text(frame, TAG_COLUMN, path, required=False, numbers_ok=True)
    tests = _text(frame, TESTS_COLUMN, path, required=False)
    none = pl.Series([None] * frame.height, dtype=pl.String)
    kinds = _kinds(frame, path, kind, output.to_list(), expected.to_list() if expected is not None else [None] * frame.height)
    return pl.DataFrame(
        {
            "failure_id": _ids(frame, path, "failure-"),
            "prompt": prompt,
            "output": output,
            "expected": expected if expected is not None else none,
            "tag": tag if tag is not None else none,
            "severity": _severity(frame, severity_column, path, severity_required),
            "kind": kinds,
            "tests": tests if tests is not None else none,
        },
        schema=FAILURE_SCHEMA,
    )


def _user_turns(frame: pl.DataFrame, path: Path) -> pl.Series:
    """The first user message of a `messages` column (datagen's own SFT output, TRL's format)."""
    messages = frame["messages"]
    if not (isinstance(messages.dtype, pl.List) and isinstance(messages.dtype.inner, pl.Struct)):
        raise DatagenError(f"holds {messages.dtype}, not a list of {{role, content}} messages", path, "messages")
    fields = {f.name for f in messages.dtype.inner.fields}
    if not {"role", "content"} <= fields:
        raise DatagenError("messages need 'role' and 'content' fields", path, "messages")
    user = pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
    return frame.select(pl.col("messages").list.eval(user).list.first()).to_series()


def read_train(path: str | Path, text_column: str = "prompt") -> pl.DataFrame:
    """train_id, prompt: the training set's prompts (rows without one are skipped). A file
    without `text_column` but with TRL-style `messages` gives the first user message of each row."""
    path = Path(path)
    frame = read_table(path, "training set")
    if text_column in frame.columns or "messages" not in frame.columns:
        prompts = _text(frame, text_column, path, required=False)
        if prompts is None:
            raise _missing(frame, text_column, path)
    else:
        prompts = _user_turns(frame, path)
    train = pl.DataFrame({"train_id": _ids(frame, path, "train-"), "prompt": prompts}, schema=TRAIN_SCHEMA)
    train = train.filter(pl.col("prompt").is_not_null() & (pl.col("prompt").str.strip_chars() != ""))
    if train.height == 0:
        raise DatagenError("no row has a prompt", path, text_column)
    return train

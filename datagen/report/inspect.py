"""`datagen inspect DIR`: the report's key figures as terminal tables, and rows with their verdicts.

DIR is a run's output directory (with run/) or a plain output dataset (README card + data/).
`--where stage=NAME` selects the rows that stage dropped; `--where COLUMN=VALUE` any column;
`--errors` the rows a stage recorded an error on without dropping them; `--pairs` the written
preference pairs, chosen beside rejected; `--id ID` one row's every column.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

import polars as pl

from datagen.errors import DatagenError
from datagen.report.html import REPORT_FILE, stage_columns
from datagen.report.sections import kept_errors
from datagen.run.run_dir import RUN_SUBDIR
from datagen.report.view import RunView, card_funnel, key_figures, load_run, percent, text_of

DEFAULT_ROWS = 5
PROMPT_CHARS = 300
TEXT_CHARS = 600
# Model output may hold terminal escape sequences; they must not reach the user's terminal.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
TABLE = dict(
    tbl_formatting="ASCII_MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
    tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=120, tbl_width_chars=200, tbl_cell_numeric_alignment="RIGHT",
)


def clean(text: str, limit: int | None = None) -> str:
    text = CONTROL.sub("\ufffd", text)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "\u2026"


def inspect(out: Path, rows: int | None = None, where: list[str] | None = None, stream: TextIO | None = None,
            pairs: bool = False, errors: bool = False, row_id: str | None = None) -> None:
    """Print a run's figures, or its rows (`rows`, `where`, `errors`), pairs or one row (`row_id`).

    Raises DatagenError: DIR holds no run or dataset, a `where` names no stage or column, the run
    wrote no pairs, no row has the id."""
    stream = stream or sys.stdout
    view = load_run(out)
    filters = [parse_where(w, view) for w in where or []]
    write = lambda text="": print(text, file=stream)  # noqa: E731

    write(f"{'run' if view.manifest is not None else 'dataset'}: {view.out}")
    if row_id is not None:
        _print_record(view, row_id, write)
        return
    if pairs:
        _print_pairs(view, DEFAULT_ROWS if rows is None else rows, write)
        return
    if errors:
        filters.append(("errors that are not drops", _kept_errors(view)))
    if rows is not None or filters:
        _print_rows(view, filters, DEFAULT_ROWS if rows is None else rows, write)
        return
    for name, value in key_figures(view):
        write(f"  {name}: {clean(value)}")
    write()
    if view.stages:
        write(_funnel_table(view))
        for line in _trust_lines(view):
            write(clean(line))
    elif card_funnel(view.card):
        write("rows through the stages (from the dataset card):")
        write(clean(card_funnel(view.card)))
    for line in _token_lines(view):
        write(clean(line))
    report = view.out / RUN_SUBDIR / REPORT_FILE
    if report.exists():
        write(f"\nreport: {report}")


def _funnel_table(view: RunView) -> str:
    table = pl.DataFrame({
        "stage": view.labels,
        "rows in": [s["rows_in"] for s in view.stages],
        "kept": [s["kept"] for s in view.stages],
        "dropped": [sum(s["dropped"].values()) for s in view.stages],
        "kept %": ["-" if s["stage"] == "generate" or not s["rows_in"] else percent(s["kept"] / s["rows_in"]) for s in view.stages],
        "drop reasons": [", ".join(f"{r}: {c}" for r, c in sorted(s["dropped"].items())) or "-" for s in view.stages],
        "seconds": [s["seconds"] for s in view.stages],
    })
    errors = [kept_errors(s) for s in view.stages]
    if any(errors):  # kept by on_error: keep, never passed: as the card's funnel says
        table.insert_column(3, pl.Series("kept with an error", errors))
    with pl.Config(**TABLE):
        return str(table)


def _trust_lines(view: RunView) -> list[str]:
    """The trust figures past their bounds (datagen.report.trust), one line each; the report and
    the card have the whole table."""
    from datagen.report.trust import trust

    flagged = [f"  {step}: {name} {value}: {warning}" for step, figures in trust(view.stages, (view.manifest or {}).get("output"))
               for name, value, warning in figures if warning]
    return ["", "trust warnings:", *flagged] if flagged else ["", "trust: no figure past its bound"]


def _token_lines(view: RunView) -> list[str]:
    """A target run's line, the tokens per model step (and model) and the cost line with prices."""
    from datagen.run.tokens import cost_line

    manifest = view.manifest or {}
    lines = [f"\n{manifest['target']['line']}"] if (manifest.get("target") or {}).get("line") else []
    record = manifest.get("tokens") or {}
    steps = record.get("steps") or []
    if steps:
        table = pl.DataFrame({
            "step": [s["step"] for s in steps],
            "model": [str(s["model"]) for s in steps],
            "prompt tokens": [s["prompt_tokens"] for s in steps],
            "completion tokens": [s["completion_tokens"] for s in steps],
        })
        with pl.Config(**TABLE):
            lines += ["", "tokens per model step:", str(table)]
        lines.append(cost_line(record) or "no prices given (output.prices or datagen run --prices FILE): no cost")
    return lines


def parse_where(expression: str, view: RunView) -> tuple[str, pl.Expr]:
    """`stage=NAME` -> the rows NAME dropped; `COLUMN=VALUE` -> rows whose COLUMN equals VALUE."""
    column, sep, value = expression.partition("=")
    column, value = column.strip(), value.strip()
    if not sep or not column:
        raise DatagenError(f"expected stage=NAME or COLUMN=VALUE, got {expression!r}", field="--where")
    if column == "stage":
        if view.rows is None:
            raise DatagenError("holds only the kept rows (no run/ directory), so no stage dropped any of them here", view.out, "--where")
        if value not in view.labels:
            raise DatagenError(f"no stage {value!r} in this run (stages: {', '.join(view.labels)})", view.out, "--where")
        return expression, pl.col("dropped_by") == value
    frame = view.rows if view.rows is not None else view.output
    schema = frame.collect_schema() if frame is not None else {}
    if column not in schema:
        raise DatagenError(f"no column {column!r} (columns: {', '.join(schema)})", view.out, "--where")
    dtype = schema[column]
    try:
        if dtype == pl.Boolean:
            literal = {"true": True, "false": False}[value.lower()]
        else:
            literal = pl.Series([value]).cast(dtype, strict=True)[0]
    except Exception:  # noqa: BLE001 - polars raises several kinds for a value that does not fit the type
        raise DatagenError(f"{value!r} is not a value of column {column!r} ({dtype})", view.out, "--where") from None
    return expression, pl.col(column) == literal


def _print_rows(view: RunView, filters: list[tuple[str, pl.Expr]], limit: int, write) -> None:
    frame = view.rows if view.rows is not None else view.output
    what = "candidates (run/stages)" if view.rows is not None else "rows (data/)"
    if frame is None:
        raise DatagenError("holds no rows to show", view.out)
    for _, expr in filters:
        frame = frame.filter(expr)
    total = frame.select(pl.len()).collect().item()
    picked = frame.head(limit).collect()
    condition = " and ".join(text for text, _ in filters) or "all"
    write(f"{what} where {condition}: {total} rows, showing {picked.height}")
    columns = picked.columns
    for i, row in enumerate(picked.iter_rows(named=True), 1):
        write()
        write(clean(_row_heading(i, row, view)))
        for name, value in _row_details(row, view, columns):
            text = clean(value, TEXT_CHARS if name not in ("prompt",) else PROMPT_CHARS)
            first, *rest = text.splitlines() or [""]
            write(f"  {name}: {first}")
            for line in rest:
                write(f"    {line}")


def _error_columns(view: RunView, columns: list[str]) -> list[tuple[str, str]]:
    """(stage label, its error column) for the stages that record errors on rows (judge, revise, ...)."""
    return [(label, f"{label}_error") for label in view.labels if label != "generate" and f"{label}_error" in columns]


def _kept_errors(view: RunView) -> pl.Expr:
    """Rows with a stage error that the stage did not drop (on_error: keep)."""
    columns = view.columns(view.rows if view.rows is not None else view.output)
    found = [pl.col(error).is_not_null() & (pl.col("dropped_by").fill_null("") != label) for label, error in _error_columns(view, columns)]
    if not found or "dropped_by" not in columns:
        return pl.lit(False)
    return pl.any_horizontal(found)


def _row_heading(i: int, row: dict[str, Any], view: RunView) -> str:
    head = f"--- {i}. {row.get('template_id', '')} prompt {row.get('prompt_id', '?')}"
    if "candidate_id" in row:
        head += f" candidate {row['candidate_id']}"
    dropped_by = row.get("dropped_by")
    if "keep" in row and view.rows is not None:
        if dropped_by:
            head += f"  [dropped by {dropped_by}: {row.get(f'{dropped_by}_reason')}]"
        else:  # a stage error kept by on_error: keep is not a pass
            errors = [label for label, column in _error_columns(view, list(row)) if row.get(column)]
            head += f"  [not dropped, but {', '.join(errors)} recorded an error]" if errors else "  [kept]"
    return head


def _cut_off(row: dict[str, Any]) -> str | None:
    """'at max_tokens=N' for a candidate the model did not finish."""
    if row.get("finish_reason") != "length":
        return None
    try:
        limit = json.loads(row.get("sampling") or "{}").get("max_tokens")
    except (ValueError, AttributeError):
        limit = None
    return f"cut off at max_tokens={limit}" if limit is not None else "cut off at max_tokens"


def _print_record(view: RunView, row_id: str, write) -> None:
    frame = view.rows if view.rows is not None else view.output
    if frame is None:
        raise DatagenError("holds no rows to show", view.out)
    columns = view.columns(frame)
    keys = [c for c in ("candidate_id", "prompt_id", "chosen_id") if c in columns]
    found = pl.DataFrame()
    for key in keys:
        found = frame.filter(pl.col(key) == row_id).collect()
        if found.height:
            break
    if not found.height:
        raise DatagenError(f"no row with id {row_id!r} (looked in {', '.join(keys) or 'no id column'})", view.out, "--id")
    for i, row in enumerate(found.iter_rows(named=True), 1):
        write()
        write(clean(_row_heading(i, row, view)))
        cut = _cut_off(row)
        if cut:
            write(f"  ({cut})")
        for name in columns:
            value = row[name]
            text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
            first, *rest = clean(text).splitlines() or [""]
            write(f"  {name}: {first}")
            for line in rest:
                write(f"    {line}")


def _print_pairs(view: RunView, limit: int, write) -> None:
    columns = view.columns(view.output)
    if "chosen" not in columns or "rejected" not in columns:
        raise DatagenError("holds no preference pairs (output.format is not dpo)", view.out, "--pairs")
    total = view.output.select(pl.len()).collect().item()  # type: ignore[union-attr]
    picked = view.output.head(limit).collect()  # type: ignore[union-attr]
    write(f"pairs: {total}, showing {picked.height}")
    for i, row in enumerate(picked.iter_rows(named=True), 1):
        prompt = row.get("prompt") if "prompt" in row else row.get("messages")
        write()
        write(clean(f"--- {i}. {row.get('template_id', '')} prompt {row.get('prompt_id', '?')}  strategy {row.get('strategy', '?')}  margin {row.get('margin')}"))
        write(f"  prompt: {clean(text_of(prompt[-1:] if isinstance(prompt, list) and prompt else prompt), PROMPT_CHARS)}")
        table = pl.DataFrame({
            "": ["id", "score", "verdict", "text"],
            "chosen": [str(row.get("chosen_id")), str(row.get("chosen_score")), str(row.get("chosen_verdict")), clean(text_of(row["chosen"]), TEXT_CHARS)],
            "rejected": [str(row.get("rejected_id")), str(row.get("rejected_score")), str(row.get("rejected_verdict")), clean(text_of(row["rejected"]), TEXT_CHARS)],
        })
        with pl.Config(**(TABLE | {"fmt_str_lengths": TEXT_CHARS, "tbl_width_chars": 160})):
            write(str(table))


def _row_details(row: dict[str, Any], view: RunView, columns: list[str]) -> list[tuple[str, str]]:
    details: list[tuple[str, str]] = []
    dropped_by = row.get("dropped_by")
    if dropped_by and view.rows is not None:
        # why it was dropped: the dropping stage's own columns (scores, detail, rationale)
        details += [(c, str(row[c])) for c in stage_columns(dropped_by, view.labels, columns) if row.get(c) is not None]
    elif view.rows is not None:  # kept, but a stage recorded an error on it (on_error: keep): which error
        details += [(column, str(row[column])) for _, column in _error_columns(view, columns) if row.get(column)]
    cut = _cut_off(row)
    if cut:
        details.append(("finished", cut))
    if "messages" in row and "completion" in row:  # a candidate: prompt, then the completion
        details.append(("prompt", text_of(row["messages"][-1:] if row["messages"] else None)))
        details.append(("completion", text_of(row["completion"])))
    else:
        for name in ("messages", "prompt", "completion", "chosen", "rejected"):
            if name in row:
                details.append((name, text_of(row[name])))
    return details

"""OUT/run/report.html: one self-contained page that shows what happened to the rows of a run.

Plots are inline SVG made here (datagen.report.plots), so the page opens offline; it holds no script at
all, and its Content-Security-Policy forbids scripts anyway. Every text from rows (model output,
prompts, template names) is escaped. A section appears only when the run has its data.
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datagen.report import plots
from datagen.report.sections import kept_errors, with_summary
from datagen.report.sections.base import KEPT_DROPPED
from datagen.report.sections.base import edge_labels as _edge_labels, figure as _figure, figures as _figures, histogram as _histogram
from datagen.report.sections.base import plot_row as _plots, table as _table
from datagen.report.trust import trust
from datagen.report.view import RunView, card_funnel, explain_no_pair, key_figures, load_run, percent, text_of
from datagen.run.run_dir import RUN_SUBDIR, atomic_write_bytes

REPORT_FILE = "report.html"
SAMPLES_PER_REASON = 2
SAMPLES_KEPT = 2
SAMPLE_PAIRS = 4
EXCERPT_CHARS = 140
TEXT_CHARS = 2000
REASON_COLOURS = [c for c in plots.PALETTE if c != plots.KEPT_COLOUR]


def write_report(out: Path) -> Path | None:
    """Write OUT/run/report.html. The data is already written when this runs, so a failure here is
    reported as a warning instead of failing the run."""
    try:
        html = build_report(load_run(out))
        path = Path(out) / RUN_SUBDIR / REPORT_FILE
        atomic_write_bytes(path, html.encode())
        return path
    except Exception as err:  # noqa: BLE001 - a broken view must not turn a finished run into a failed one
        print(f"datagen: warning: no run report ({type(err).__name__}: {err})", file=sys.stderr)
        return None


def build_report(view: RunView) -> str:
    """The page: the run's own sections (overview, trust, funnel, output), then one section per
    step section key (datagen.report.sections) in the order the steps first appear, the generic
    one last, then lengths and samples."""
    sections = [
        ("overview", "Overview", _overview(view)),
        ("trust", "Trust: model steps", _trust(view)),
        ("funnel", "Rows through the stages", _funnel(view)),
        ("output", "Output rows", _output(view)),
        ("tokens", "Tokens and cost", _tokens(view)),
        *_step_sections(view),
        ("lengths", "Lengths", _lengths(view)),
        ("samples", "Sample rows", _samples(view)),
        ("pairs", "Sample pairs", _pairs(view)),
    ]
    sections = [s for s in sections if s[2]]
    name = (view.manifest or {}).get("recipe") or view.out.name
    nav = " ".join(f'<a href="#{key}">{escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{html}</section>' for key, title, html in sections)
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        f"<title>datagen report: {escape(str(name))}</title><style>{CSS}</style></head><body>"
        f"<header><h1>datagen run report: {escape(str(name))}</h1><p class=\"path\">{escape(str(view.out))}</p><nav>{nav}</nav></header>"
        f"<main>{body}</main></body></html>"
    )


CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#222;margin:0;background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:16px 24px}header h1{margin:0;font-size:20px}
.path{margin:2px 0 8px;color:#b8c4d0;font-size:12px}nav a{color:#cfe3ff;margin-right:12px;font-size:13px}
main{padding:8px 24px 40px;max-width:1200px}section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:8px 18px 16px;margin:16px 0}
h2{font-size:17px;margin:10px 0}h3{font-size:14px;margin:14px 0 6px;color:#333}
table{border-collapse:collapse;margin:6px 0;font-size:13px}th,td{border-bottom:1px solid #eee;padding:3px 10px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
dl.figures{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;margin:6px 0}dl.figures dt{font-weight:600}dl.figures dd{margin:0}
.plots{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.plots figure{margin:0}figcaption{font-size:12px;color:#555;margin-bottom:2px}
.legend{font-size:12px;margin:2px 0 6px}.key{margin-right:12px;white-space:nowrap}.key i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
details.row{border-bottom:1px solid #eee;padding:3px 0}details.row summary{cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.tag{display:inline-block;padding:0 6px;border-radius:3px;font-size:12px;margin-right:6px;color:#fff}.tag.kept{background:#009E73}.tag.dropped{background:#D55E00}
.tpl{color:#666;font-size:12px;margin-right:6px}pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:6px 8px;border-radius:4px;margin:4px 0;font-size:12px;max-height:320px;overflow:auto}
.note{color:#666;font-size:12px}td.warn{color:#a33;font-weight:600}.tag.error{background:#CC79A7}
"""


def _columns(view: RunView) -> set[str]:
    return set(view.columns(view.rows))


# ---- sections -------------------------------------------------------------------------------

def _step_sections(view: RunView) -> list[tuple[str, str, str]]:
    """(key, title, html) per section key, each step's part asked of its kind's section."""
    parts: dict[str, tuple[str, list[str]]] = {}
    for stage, section in with_summary(view.stages):
        html = section.html(stage["stage"], stage["summary"], view)
        if html:
            parts.setdefault(section.key, (section.title, []))[1].append(html)
    other = parts.pop("other", None)
    ordered = [(key, title, "".join(html)) for key, (title, html) in parts.items()]
    return ordered + ([("other", other[0], "".join(other[1]))] if other else [])


def _overview(view: RunView) -> str:
    return _figures(key_figures(view))


def _trust(view: RunView) -> str:
    """Per model step: error and degenerate rates, score spread, order agreement, length bias
    (datagen.report.trust); a flagged figure is marked and says why."""
    sections = trust(view.stages, (view.manifest or {}).get("output"))
    if not sections:
        return ""
    rows = []
    for step, figures in sections:
        for name, value, warning in figures:
            flag = f'<td class="warn">{escape(warning)}</td>' if warning else "<td>-</td>"
            rows.append(f'<tr data-step="{escape(step)}" data-flagged="{"yes" if warning else "no"}"><td>{escape(step)}</td><td>{escape(name)}</td><td>{escape(value)}</td>{flag}</tr>')
    flagged = sum(1 for _, figures in sections for f in figures if f[2])
    note = f'<p class="note">{flagged} figure(s) flagged: read the data before trusting these steps.</p>' if flagged else '<p class="note">Nothing flagged.</p>'
    return note + f'<table class="trust"><thead><tr><th>step</th><th>figure</th><th>value</th><th>warning</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _funnel(view: RunView) -> str:
    if not view.stages:
        return _card_funnel(view)
    reasons = sorted({r for s in view.stages for r in s["dropped"]})
    colours = {"kept": plots.KEPT_COLOUR, "candidates": plots.KEPT_COLOUR}
    colours |= {r: REASON_COLOURS[i % len(REASON_COLOURS)] for i, r in enumerate(reasons)}
    bars, table = [], []
    for s in view.stages:
        generated = s["stage"] == "generate"
        dropped = sum(s["dropped"].values())
        segments = [("candidates" if generated else "kept", s["kept"])] + sorted(s["dropped"].items())
        bars.append((s["stage"], segments))
        share = "-" if generated or not s["rows_in"] else percent(s["kept"] / s["rows_in"])
        why = ", ".join(f"{r}: {c}" for r, c in sorted(s["dropped"].items())) or "-"
        if kept_errors(s):  # alive, but an error is no pass
            why += f"; {kept_errors(s)} kept with an error (on_error: keep)"
        table.append(
            f'<tr data-stage="{escape(s["stage"])}" data-rows-in="{s["rows_in"]}" data-kept="{s["kept"]}" data-dropped="{dropped}">'
            f'<td>{escape(s["stage"])}</td><td class="num">{s["rows_in"]}</td><td class="num">{s["kept"]}</td>'
            f'<td class="num">{dropped}</td><td class="num">{share}</td><td>{escape(why)}</td><td class="num">{s["seconds"]:.1f}</td></tr>'
        )
    head = "".join(f"<th{' class=num' if i in (1, 2, 3, 4, 6) else ''}>{h}</th>" for i, h in enumerate(
        ["stage", "rows in", "kept", "dropped", "kept %", "drop reasons", "seconds"]))
    names = ["kept"] + reasons
    html = plots.stacked_hbars("rows through the stages", bars, colours) + plots.legend(names, [colours[n] for n in names])
    html += '<p class="note">For generate, rows in are prompts and kept rows are the candidates sampled from them.</p>'
    html += f'<table class="funnel"><thead><tr>{head}</tr></thead><tbody>{"".join(table)}</tbody></table>'
    return html + _template_funnel(view)


def _template_funnel(view: RunView) -> str:
    templates = sorted({t for s in view.stages for t in s["by_template"]})
    if len(templates) < 1 or len(view.stages) < 2:
        return ""
    rows = []
    for t in templates:
        cells = []
        for s in view.stages:
            n_in, kept = s["by_template"].get(t, (None, None))
            if n_in is None:
                cells.append('<td class="num">-</td>')
                continue
            share = kept / n_in if n_in and s["stage"] != "generate" else 1.0
            cells.append(f'<td class="num" style="background:rgba(0,158,115,{0.08 + 0.3 * min(share, 1):.2f})">{kept} / {n_in}</td>')
        rows.append(f"<tr><td>{escape(t)}</td>{''.join(cells)}</tr>")
    head = "<th>template</th>" + "".join(f'<th class="num">{escape(s["stage"])}</th>' for s in view.stages)
    return f"<h3>Kept / in, per template</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _card_funnel(view: RunView) -> str:
    """A plain dataset: the card's own table of rows through the stages, shown as text."""
    table = card_funnel(view.card)
    return f"<pre>{escape(table)}</pre>" if table else ""


def _flat(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested figures as (dotted name, value) pairs; a dict of plain values becomes one line."""
    pairs: list[tuple[str, Any]] = []
    for key, value in figures.items():
        name = f"{prefix}{key}".replace("_", " ")
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            pairs.append((name, ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"))
        elif isinstance(value, dict):
            pairs += _flat(value, f"{prefix}{key}.")
        else:
            pairs.append((name, json.dumps(value) if isinstance(value, list) else value))
    return pairs


def _output(view: RunView) -> str:
    """What the builder made of the surviving candidates (the manifest's `output` figures)."""
    figures = (view.manifest or {}).get("output")
    if not isinstance(figures, dict) or not figures:
        return ""
    html = _figures(_flat(figures))
    why = [(reason, count) for key in ("prompts_without_pairs", "skipped_options") for reason, count in (figures.get(key) or {}).items()]
    if why:
        html += "<h3>Why prompts gave no pair, or pairs were skipped</h3>" + _table(["reason", "count", "what it means"], [[r, c, explain_no_pair(r)] for r, c in why], {1})
    return html


def _tokens(view: RunView) -> str:
    """A target run's line, and the tokens each model step spent (per step, model; the cost with prices)."""
    from datagen.run.tokens import cost_line

    manifest = view.manifest or {}
    target = (manifest.get("target") or {}).get("line")
    record = manifest.get("tokens") or {}
    html = f"<p>{escape(target)}</p>" if target else ""
    steps = record.get("steps") or []
    if not steps:
        return html
    priced = "cost_usd" in record
    head = "<th>step</th><th>model</th><th>prompt tokens</th><th>completion tokens</th>" + ("<th>cost (USD)</th>" if priced else "")
    rows = [
        f"<tr><td>{escape(str(s['step']))}</td><td>{escape(str(s['model']))}</td><td>{s['prompt_tokens']:,}</td><td>{s['completion_tokens']:,}</td>"
        + (f"<td>{s['cost_usd']:.4f}</td>" if "cost_usd" in s else "<td>-</td>" if priced else "") + "</tr>"
        for s in steps
    ]
    line = cost_line(record) or "No prices given (output.prices or datagen run --prices FILE): no cost."
    return html + f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table><p>{escape(line)}</p>'


def _length_series(column: str, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return pl.col(column).str.len_chars()
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        return pl.col(column).list.last().struct.field("content").str.len_chars()  # the answer of a conversation
    return pl.col(column).cast(pl.String).str.len_chars()


def _lengths(view: RunView) -> str:
    figures, notes = [], []
    if view.rows is not None and "completion" in _columns(view):
        # A candidate whose request failed has no completion, so no length.
        lengths = view.rows.select(pl.col("completion").str.len_chars().alias("n"), "keep").drop_nulls("n").collect()
        if lengths.height:
            edges = np.unique(np.round(np.histogram_bin_edges(lengths["n"].to_numpy(), bins=10)))
            if edges.size >= 2:
                series = {
                    "kept": _histogram(lengths.filter(pl.col("keep"))["n"].to_numpy(), edges),
                    "dropped": _histogram(lengths.filter(~pl.col("keep"))["n"].to_numpy(), edges),
                }
                figures.append(_figure("completion length in characters, kept vs dropped", plots.grouped_bars("completion lengths", _edge_labels(edges, 0), series, colours=KEPT_DROPPED)))
    schema = view.output.collect_schema() if view.output is not None else {}
    if "chosen" in schema and "rejected" in schema:
        pairs = view.output.select(  # type: ignore[union-attr]
            _length_series("chosen", schema["chosen"]).alias("chosen"),
            _length_series("rejected", schema["rejected"]).alias("rejected"),
        ).collect()
        if pairs.height:
            both = np.concatenate([pairs["chosen"].fill_null(0).to_numpy(), pairs["rejected"].fill_null(0).to_numpy()])
            edges = np.unique(np.round(np.histogram_bin_edges(both, bins=10)))
            if edges.size >= 2:
                series = {side: _histogram(pairs[side].fill_null(0).to_numpy(), edges) for side in ("chosen", "rejected")}
                figures.append(_figure("answer length in characters, chosen vs rejected", plots.grouped_bars("chosen vs rejected lengths", _edge_labels(edges, 0), series)))
            longer = float((pairs["chosen"] > pairs["rejected"]).mean() or 0)
            notes.append(_figures([
                ("pairs", pairs.height),
                ("mean length chosen / rejected", f"{pairs['chosen'].mean():.0f} / {pairs['rejected'].mean():.0f} characters"),
                ("chosen longer than rejected", f"{longer:.1%} of pairs (far from 50% hints at a length bias)"),
            ]))
    return _plots(*figures) + "".join(notes) if figures or notes else ""


# ---- sample rows ----------------------------------------------------------------------------

def stage_columns(label: str, labels: list[str], columns: list[str]) -> list[str]:
    """A stage's own annotation columns, without its verdict and without a longer label's columns."""
    longer = [o for o in labels if o != label and o.startswith(label + "_")]
    return [
        c for c in columns
        if c.startswith(label + "_") and c not in (f"{label}_keep", f"{label}_reason") and not any(c.startswith(o + "_") for o in longer)
    ]


def _excerpt(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _row_html(row: dict[str, Any], label: str, extra: list[str]) -> str:
    kept = row.get("dropped_by") != label
    reason = "kept" if kept else str(row.get(f"{label}_reason") or "dropped")
    error = row.get(f"{label}_error")
    if kept and isinstance(error, str) and error:  # a judge or revise error kept by on_error: keep is no pass
        reason = f"{label}_error (not dropped): {_excerpt(error, 80)}"
    completion = text_of(row.get("completion"))
    prompt = text_of(row.get("messages"))
    details = [[c, _excerpt(str(row[c]), 600)] for c in extra if row.get(c) is not None]
    return (
        f'<details class="row"><summary><span class="tag {"error" if kept and error else "kept" if kept else "dropped"}">{escape(reason)}</span>'
        f'<span class="tpl">{escape(str(row.get("template_id", "")))}</span>{escape(_excerpt(completion, EXCERPT_CHARS))}</summary>'
        f"<b>prompt</b><pre>{escape(prompt[:TEXT_CHARS])}</pre><b>completion</b><pre>{escape(completion[:TEXT_CHARS])}</pre>"
        + (_table(["column", "value"], details) if details else "")
        + "</details>"
    )


def _samples(view: RunView) -> str:
    if view.rows is None:
        return ""
    columns = view.columns(view.rows)
    if "candidate_id" not in columns:
        return ""
    order = pl.col("candidate_id").hash(seed=0)  # a fixed pseudo-random pick, the same on every build
    parts = ['<p class="note">A fixed pseudo-random pick per stage: rows it dropped (up to '
             f"{SAMPLES_PER_REASON} per reason) and rows it kept. Click a row for the prompt, the whole completion and the stage's columns.</p>"]
    for label in view.labels:
        if label == "generate":
            continue
        keep, reason = f"{label}_keep", f"{label}_reason"
        if keep not in columns:
            continue
        extra = stage_columns(label, view.labels, columns)
        picked = pl.concat([
            view.rows.filter(pl.col("dropped_by") == label).sort(order).filter(pl.int_range(pl.len()).over(reason) < SAMPLES_PER_REASON),
            view.rows.filter(pl.col(keep).fill_null(False)).sort(order).head(SAMPLES_KEPT),
        ]).collect()
        if picked.height:
            parts.append(f"<h3>{escape(label)}</h3>" + "".join(_row_html(r, label, extra) for r in picked.iter_rows(named=True)))
    return "".join(parts) if len(parts) > 1 else ""


def _pairs(view: RunView) -> str:
    """A few written preference pairs, chosen beside rejected."""
    columns = view.columns(view.output)
    if "chosen" not in columns or "rejected" not in columns:
        return ""
    prompt = next((c for c in ("prompt", "messages") if c in columns), None)
    picked = view.output.select([c for c in (prompt, "chosen", "rejected") if c]).head(SAMPLE_PAIRS).collect()  # type: ignore[union-attr]
    parts = []
    for row in picked.iter_rows(named=True):
        chosen, rejected = text_of(row["chosen"]), text_of(row["rejected"])
        parts.append(
            f'<details class="row"><summary><span class="tag kept">chosen</span>{escape(_excerpt(chosen, EXCERPT_CHARS))}</summary>'
            + (f"<b>prompt</b><pre>{escape(text_of(row[prompt])[:TEXT_CHARS])}</pre>" if prompt else "")
            + f"<b>chosen</b><pre>{escape(chosen[:TEXT_CHARS])}</pre><b>rejected</b><pre>{escape(rejected[:TEXT_CHARS])}</pre></details>"
        )
    return "".join(parts)

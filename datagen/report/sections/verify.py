"""The verify step's section: pass rate per template, prompts by the share of their samples that
passed, and the figures per verifier."""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np
import polars as pl

from datagen.report import plots
from datagen.report.flags import pct
from datagen.report.sections.base import Section, figure, plot_row, table

PASS_RATE_BINS = ["0", "0-25%", "25-50%", "50-75%", "75-<100%", "100%"]


class VerifySection(Section):
    key = "verify"
    title = "Verifier pass rates"

    def headline(self, s: dict[str, Any]) -> str:
        unchecked = s.get("unchecked") or 0
        passed_through = f"; {unchecked} rows of templates with verifier `none` passed unchecked" if unchecked else ""
        return f"pass rate {pct(s.get('keep_rate'))} of {s.get('verified')} checked rows; prompts with a pass {s.get('prompts_with_a_pass')}/{s.get('prompts')}{passed_through}"

    def html(self, label: str, s: dict[str, Any], view) -> str:
        parts = [f"<h3>{escape(label)}</h3>"]
        by_template = s.get("by_template") or {}
        plotted = []
        if by_template:
            names = sorted(by_template)
            svg = plots.grouped_bars(f"{label} pass rate per template", names, {"pass rate": [by_template[t].get("keep_rate") for t in names]}, max_value=1, percent=True)
            plotted.append(figure("share of rows that passed, per template", svg))
        keep = f"{label}_keep"
        if view.rows is not None and keep in view.columns(view.rows):
            per_prompt = (
                view.rows.filter(pl.col(keep).is_not_null())
                .group_by("template_id", "prompt_id")
                .agg(pl.col(keep).cast(pl.Float64).mean().alias("rate"))
                .collect()
            )
            if per_prompt.height:
                series = {}
                for (template,), frame in sorted(per_prompt.group_by("template_id"), key=lambda g: str(g[0][0])):
                    rates = frame["rate"].to_numpy()
                    middle = np.histogram(rates[(rates > 0) & (rates < 1)], bins=[0, 0.25, 0.5, 0.75, 1])[0]
                    series[str(template)] = [float((rates == 0).sum()), *map(float, middle), float((rates == 1).sum())]
                plotted.append(figure("prompts by the share of their samples that passed", plots.grouped_bars(f"{label} pass rate per prompt", PASS_RATE_BINS, series)))
        parts.append(plot_row(*plotted))
        by_verifier = s.get("by_verifier") or {}
        rows = [[k, v.get("verified"), v.get("passed"), pct(v.get("keep_rate")), f"{v.get('prompts_with_a_pass')}/{v.get('prompts')}",
                 ", ".join(f"{r}: {c}" for r, c in (v.get("reasons") or {}).items()) or "-"] for k, v in sorted(by_verifier.items())]
        if rows:
            parts.append(table(["verifier", "verified", "passed", "pass rate", "prompts with a pass", "failures"], rows, {1, 2, 3, 4}))
        return "".join(parts)

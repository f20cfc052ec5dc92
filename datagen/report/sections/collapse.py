"""The collapse step's section (report id `diversity`): sibling duplicates, cross-prompt clusters and
the collapse rates per template and persona."""

from __future__ import annotations

from html import escape
from typing import Any

from datagen.report import plots
from datagen.report.flags import pct
from datagen.report.sections.base import Section, figure, plot_row, scalar_figures, table

RATES = ["collapse_rate", "near_duplicate_rate", "repeated_prefix_rate"]


class CollapseSection(Section):
    key = "diversity"
    title = "Diversity and collapse"

    def headline(self, s: dict[str, Any]) -> str:
        worst = max(
            ((r.get("collapse_rate") or 0, f"{group} {name!r}") for group in ("template", "persona")
             for name, r in (s.get(f"by_{group}") or {}).items()),
            default=None,
        )
        text = f"{s.get('sibling_duplicates')} sibling duplicates, {s.get('cross_set_clusters')} cross-prompt clusters"
        return text + (f"; highest collapse rate {pct(worst[0])} ({worst[1]})" if worst else "")

    def html(self, label: str, s: dict[str, Any], view) -> str:
        parts = [f"<h3>{escape(label)}</h3>", scalar_figures(s)]
        for group in ("template", "persona"):
            stats = s.get(f"by_{group}") or {}
            if not stats:
                continue
            names = sorted(stats)
            series = {r.replace("_", " "): [stats[n].get(r) for n in names] for r in RATES if any(r in stats[n] for n in names)}
            svg = plots.grouped_bars(f"{label} per {group}", names, series, max_value=1, percent=True)
            keys = sorted({k for n in names for k in stats[n]})
            rows = [[n, *("-" if stats[n].get(k) is None else stats[n][k] for k in keys)] for n in names]
            parts.append(plot_row(figure(f"collapse per {group}", svg)) + table([group, *keys], rows, set(range(1, len(keys) + 1))))
        return "".join(parts)

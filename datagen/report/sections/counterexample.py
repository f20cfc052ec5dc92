"""The counterexample step's section (report id `clusters`): the failure clusters with their size
and budget, as its summary lists them (a list, or a dict keyed by cluster id, of dicts with a
`size`)."""

from __future__ import annotations

from html import escape
from typing import Any

from datagen.report import plots
from datagen.report.sections.base import Section, figure, plot_row, scalar_figures, table

SHOWN = 40  # clusters in the chart
LISTED = 100  # clusters in the table


def cluster_list(value: Any) -> list[dict[str, Any]] | None:
    """The clusters as a list of dicts with a numeric `size`; None when `value` is not such a list."""
    items = list(value.values()) if isinstance(value, dict) else value
    if isinstance(items, list) and items and all(isinstance(i, dict) and isinstance(i.get("size"), (int, float)) for i in items):
        if isinstance(value, dict):
            items = [{"cluster": k} | v for k, v in value.items()]
        return items
    return None


class CounterexampleSection(Section):
    key = "clusters"
    title = "Counterexample clusters"

    def headline(self, s: dict[str, Any]) -> str:
        clusters = cluster_list(s.get("clusters"))
        if not clusters:
            return ""
        sizes = sorted((int(c["size"]) for c in clusters), reverse=True)
        corrected = s.get("corrected_failure_ids") or []
        held_out = f"; {len(corrected)} eval items trained on as corrections: remove them from the held-out eval" if corrected else ""
        return f"{len(clusters)} clusters, sizes {', '.join(map(str, sizes[:8]))}{' ...' if len(sizes) > 8 else ''}{held_out}"

    def html(self, label: str, s: dict[str, Any], view) -> str:
        clusters = cluster_list(s.get("clusters"))
        if not clusters:
            return super().html(label, s, view)
        clusters = sorted(clusters, key=lambda c: -c["size"])
        shown = clusters[:SHOWN]
        names = [str(c.get("label") or c.get("name") or c.get("cluster") or c.get("id") or i) for i, c in enumerate(shown)]
        series = {"size": [float(c["size"]) for c in shown]}
        if any("budget" in c for c in shown):
            series["budget"] = [float(c.get("budget") or 0) for c in shown]
        keys = sorted({k for c in clusters for k in c if not isinstance(c[k], (dict, list))})
        caption = "cluster size and budget" + (f" (largest {SHOWN})" if len(clusters) > SHOWN else "")
        corrected = s.get("corrected_failure_ids") or []
        held_out = (f"<p><strong>Remove these eval items from your held-out eval</strong> (the dataset trains on their "
                    f"corrections): {escape(', '.join(map(str, corrected)))}</p>") if corrected else ""
        return (f"<h3>{escape(label)}: {len(clusters)} clusters</h3>" + scalar_figures(s) + held_out
                + plot_row(figure(caption, plots.grouped_bars(f"{label} clusters", names, series)))
                + table(keys, [[c.get(k, "-") for k in keys] for c in clusters[:LISTED]]))

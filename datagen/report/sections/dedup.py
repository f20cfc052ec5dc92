"""The dedup step's section (shown with collapse under `diversity`): exact and near duplicates,
their clusters and matches against reference texts."""

from __future__ import annotations

from html import escape
from typing import Any

from datagen.report.sections.base import Section, scalar_figures


class DedupSection(Section):
    key = "diversity"
    title = "Diversity and collapse"

    def headline(self, s: dict[str, Any]) -> str:
        return (f"{s.get('exact_duplicates')} exact + {s.get('near_duplicates')} near duplicates, "
                f"{s.get('duplicate_clusters')} clusters (largest {s.get('largest_cluster')}), {s.get('reference_matches')} reference matches")

    def html(self, label: str, s: dict[str, Any], view) -> str:
        return f"<h3>{escape(label)}</h3>" + scalar_figures(s)

"""The revise step's section: revisions made, unchanged and failed, per principle, and its trust
figures (errors, degenerate revisions)."""

from __future__ import annotations

from html import escape
from typing import Any

from datagen.report.flags import MAX_DEGENERATE_RATE, MAX_ERROR_RATE, Figure, pct, rate
from datagen.report.sections.base import Section, scalar_figures, table


class ReviseSection(Section):
    key = "revise"
    title = "Revisions"

    def headline(self, s: dict[str, Any]) -> str:
        return (f"{s.get('revised')} of {s.get('candidates')} revised (constitution {s.get('constitution')}), "
                f"{s.get('unchanged', 0)} unchanged, {s.get('errors')} errors ({pct(s.get('error_rate'))})")

    def html(self, label: str, s: dict[str, Any], view) -> str:
        html = f"<h3>{escape(label)} (constitution {escape(str(s.get('constitution')))})</h3>" + scalar_figures(s)
        principles = s.get("principles") or {}
        if principles:
            html += table(["principle", "rows"], [[p, n] for p, n in principles.items()], {1})
        kinds = s.get("error_kinds") or {}
        if kinds:
            html += table(["error", "rows"], [[k, n] for k, n in kinds.items()], {1})
        return html

    def trust(self, s: dict[str, Any]) -> list[Figure]:
        candidates = s.get("candidates") or 0
        kinds = s.get("error_kinds") or {}
        degenerate = sum(count for kind, count in kinds.items()
                         if kind.startswith("revision: ") and not kind.startswith(("revision: backend", "revision: empty", "revision: cut off")))
        return [
            rate("errors (no revision)", s.get("errors") or 0, candidates, MAX_ERROR_RATE, "many critiques or revisions failed"),
            rate("degenerate revisions", degenerate, candidates, MAX_DEGENERATE_RATE, "revisions describe revising, restate the critique or loop"),
            ("unchanged revisions", str(s.get("unchanged", 0)), None),
        ]

    def kept_errors(self, stage: dict[str, Any]) -> int:
        summary = stage.get("summary") or {}
        if not isinstance(summary.get("errors"), int):
            return 0
        return max(summary["errors"] - stage["dropped"].get("revise_error", 0), 0)

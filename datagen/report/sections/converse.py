"""The converse step's section (report id `chains`, with llm): conversations finished and failed,
user turns per finished conversation and the tokens both roles took; failures in the trust section."""

from __future__ import annotations

from html import escape
from typing import Any

from datagen.report.flags import MAX_ERROR_RATE, Figure, pct, rate
from datagen.report.sections.base import Section, scalar_figures, table


class ConverseSection(Section):
    key = "chains"
    title = "Model steps of the chain"

    def headline(self, s: dict[str, Any]) -> str:
        turns = ", ".join(f"{t} turns: {n}" for t, n in (s.get("turns") or {}).items()) or "-"
        return (f"{s.get('finished')} of {s.get('conversations')} conversations finished ({turns}), "
                f"{s.get('errors')} failed ({pct(s.get('error_rate'))}), {s.get('tokens')} tokens")

    def html(self, label: str, s: dict[str, Any], view) -> str:
        html = f"<h3>{escape(label)} (conversations)</h3>" + scalar_figures(s)
        turns = s.get("turns") or {}
        if turns:
            html += table(["user turns", "conversations"], [[t, n] for t, n in turns.items()], {0, 1})
        kinds = s.get("error_kinds") or {}
        if kinds:
            html += table(["error", "conversations"], [[k, n] for k, n in kinds.items()], {1})
        return html

    def trust(self, s: dict[str, Any]) -> list[Figure]:
        return [rate("failed conversations", s.get("errors") or 0, s.get("conversations") or 0, MAX_ERROR_RATE,
                     "many turns failed (backend errors or empty messages)")]

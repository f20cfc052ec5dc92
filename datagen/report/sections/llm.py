"""The llm step's section (report id `chains`, with converse): children written per parent row and
the tokens they took."""

from __future__ import annotations

from html import escape
from typing import Any

from datagen.report.sections.base import Section, scalar_figures


class LlmSection(Section):
    key = "chains"
    title = "Model steps of the chain"

    def headline(self, s: dict[str, Any]) -> str:
        return f"{s.get('children')} rows from {s.get('parents')} parent rows, {s.get('tokens')} tokens"

    def html(self, label: str, s: dict[str, Any], view) -> str:
        return f"<h3>{escape(label)}</h3>" + scalar_figures(s)

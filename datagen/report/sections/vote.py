"""The vote step's section: pass@k over prompts with a reference and prompts by their agreement
with the majority answer."""

from __future__ import annotations

from html import escape
from typing import Any

from datagen.report import plots
from datagen.report.flags import pct
from datagen.report.sections.base import Section, figure, plot_row, scalar_figures


class VoteSection(Section):
    key = "vote"
    title = "Self-consistency (voted prompts)"

    def headline(self, s: dict[str, Any]) -> str:
        if not s.get("prompts_with_reference"):  # pass figures need a reference answer
            return f"mean agreement {s.get('mean_agreement')} over {s.get('prompts')} prompts; no reference answers, so no pass rate or pass@k"
        ks = ", ".join(f"{k} {pct(v)}{_over(s, k)}" for k, v in (s.get("pass_at_k") or {}).items())
        return (f"{ks}; mean agreement {s.get('mean_agreement')}; majority right {pct(s.get('majority_accuracy'))}; "
                f"all-pass {s.get('all_pass')}, all-fail {s.get('all_fail')} of {s.get('prompts_with_reference')} prompts with a reference")

    def html(self, label: str, s: dict[str, Any], view) -> str:
        pass_at = s.get("pass_at_k") or {}
        agreement = s.get("agreement_histogram") or {}
        return f"<h3>{escape(label)}</h3>" + plot_row(
            figure("pass@k over prompts with a reference and at least k samples", plots.grouped_bars(f"{label} pass@k", list(pass_at), {"pass@k": list(pass_at.values())}, max_value=1, percent=True)) if pass_at else "",
            figure("prompts by agreement with the majority answer", plots.grouped_bars(f"{label} agreement", list(agreement), {"prompts": [float(v) for v in agreement.values()]})) if agreement else "",
        ) + scalar_figures(s)


def _over(summary: dict[str, Any], k: str) -> str:
    """" (over N prompts)" when pass@k averages fewer prompts than have a reference (some have
    fewer than k samples), so a pass@k that does not grow with k is not read as a bug."""
    counted = (summary.get("pass_at_k_prompts") or {}).get(k)
    return "" if counted is None or counted == summary.get("prompts_with_reference") else f" (over {counted} prompt{'' if counted == 1 else 's'})"

"""The judge step's section: scores per criterion, the overall score kept vs dropped (pointwise),
order agreement and ties (pairwise), and its trust figures (errors, degenerate verdicts, spread)."""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np
import polars as pl

from datagen.report import plots
from datagen.report.flags import (MAX_DEGENERATE_RATE, MAX_ERROR_RATE, MAX_TOP_SCORE_SHARE, MIN_ORDER_AGREEMENT, MIN_ROWS_FOR_SPREAD,
                                  Figure, length_bias, pct, rate)
from datagen.report.sections.base import KEPT_DROPPED, Section, edge_labels, figure, figures, histogram, plot_row


class JudgeSection(Section):
    key = "judge"
    title = "Judge scores"

    def headline(self, s: dict[str, Any]) -> str:
        if s.get("mode") == "pairwise":
            return (f"{s.get('comparisons')} comparisons (rubric {s.get('rubric')}), consistent in both orders "
                    f"{pct(s.get('consistency_rate'))}, ties {s.get('ties')}, errors {s.get('errors')} ({s.get('degenerate_verdicts', 0)} degenerate)")
        return (f"mean score {s.get('score_mean')} over {s.get('scored')} scored of {s.get('judged')} judged (rubric {s.get('rubric')}), "
                f"{s.get('errors')} without a score (errors, {s.get('degenerate', 0)} degenerate)")

    def html(self, label: str, s: dict[str, Any], view) -> str:
        parts = [f"<h3>{escape(label)} (rubric {escape(str(s.get('rubric')))}, {escape(str(s.get('mode')))})</h3>"]
        if s.get("mode") == "pairwise":
            return parts[0] + figures([(k, v) for k, v in s.items() if not isinstance(v, (dict, list))])
        criteria = s.get("criteria") or {}
        scale = sorted({int(k) for c in criteria.values() for k in (c.get("histogram") or {})})
        plotted = []
        if criteria and scale:
            series = {name: [float((c.get("histogram") or {}).get(str(k), 0)) for k in scale] for name, c in criteria.items()}
            plotted.append(figure("rows per score, per criterion", plots.grouped_bars(f"{label} criteria", [str(k) for k in scale], series)))
        score = f"{label}_score"
        if view.rows is not None and score in view.columns(view.rows):
            scored = view.rows.filter(pl.col(score).is_not_null()).select(score, pl.col(f"{label}_keep")).collect()
            if scored.height:
                lo, hi = (min(scale), max(scale)) if scale else (float(scored[score].min()), float(scored[score].max()) + 1e-9)
                edges = np.linspace(lo, hi, int(2 * (hi - lo)) + 1) if scale else np.linspace(lo, hi, 9)
                series = {
                    "kept": histogram(scored.filter(pl.col(f"{label}_keep"))[score].to_numpy(), edges),
                    "dropped": histogram(scored.filter(~pl.col(f"{label}_keep"))[score].to_numpy(), edges),
                }
                plotted.append(figure(f"overall score ({score}), kept vs dropped", plots.grouped_bars(f"{label} score", edge_labels(edges, 1), series, colours=KEPT_DROPPED)))
        parts.append(plot_row(*plotted))
        parts.append(figures([("judged", s.get("judged")), ("mean score", s.get("score_mean")),
                              ("verdicts without a score (errors)", f"{s.get('errors')} ({pct(s.get('error_rate'))})"),
                              ("of which degenerate (loops, parroting)", s.get("degenerate", "-"))]))
        return "".join(parts)

    def trust(self, s: dict[str, Any]) -> list[Figure]:
        if s.get("mode") == "pairwise":
            comparisons = s.get("comparisons") or 0
            decided = comparisons - (s.get("errors") or 0)
            agreement = s.get("consistency_rate")
            flagged = [
                rate("comparisons with an error", s.get("errors") or 0, comparisons, MAX_ERROR_RATE, "many verdicts did not parse or were degenerate"),
                ("degenerate verdicts", str(s.get("degenerate_verdicts", 0)), None),
                ("agreement of the two orders", f"{pct(agreement)} of {decided}",
                 "verdicts often flip with the order of the answers" if agreement is not None and agreement < MIN_ORDER_AGREEMENT else None),
            ]
            wins = decided - (s.get("ties") or 0)
            return flagged + [length_bias("the longer answer wins", s.get("winner_longer_rate"), wins)]
        judged = s.get("judged") or 0
        scored = judged - (s.get("errors") or 0)
        distinct, top = s.get("distinct_scores"), s.get("top_score_share")
        same = scored >= MIN_ROWS_FOR_SPREAD and distinct is not None and (distinct <= 1 or (top is not None and top >= MAX_TOP_SCORE_SHARE))
        spread = f"{distinct} distinct scores, std {s.get('score_std')}, most common score on {pct(top)} of rows" if distinct is not None else "-"
        return [
            rate("errors (no score)", s.get("errors") or 0, judged, MAX_ERROR_RATE, "many verdicts did not parse or were degenerate"),
            rate("degenerate verdicts", s.get("degenerate") or 0, judged, MAX_DEGENERATE_RATE, "the judge's rationales loop or parrot the answer"),
            ("score spread", spread, "the judge gives (nearly) everyone the same score" if same else None),
        ]

    def kept_errors(self, stage: dict[str, Any]) -> int:
        summary = stage.get("summary") or {}
        if summary.get("mode") == "pairwise" or not isinstance(summary.get("errors"), int):
            return 0  # pairwise errors count comparisons, not rows
        return max(summary["errors"] - stage["dropped"].get("judge_error", 0), 0)

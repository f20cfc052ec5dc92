"""How far a run's model steps can be trusted: per step, its error and degenerate-text rates, the
spread of a judge's scores, the agreement of pairwise verdicts across the two orders, and length
bias. Read from the stage summaries (and the pair builder's figures) that the manifest keeps, so
the report and the dataset card show the same figures.

A figure is flagged (a short warning) past these bounds:
- errors (backend, unparsable or degenerate verdicts, failed revisions) above MAX_ERROR_RATE;
- degenerate text (repetition loops, parroting rationales, meta-revisions) above MAX_DEGENERATE_RATE;
- a pointwise judge whose scores take one value, or whose most common score covers at least
  MAX_TOP_SCORE_SHARE of the rows (a judge that gives everyone the same score cannot rank them);
- pairwise verdicts that agree across the two orders less than MIN_ORDER_AGREEMENT of the time;
- the longer side wins (or is chosen) in fewer than LENGTH_BIAS[0] or more than LENGTH_BIAS[1]
  of the pairs, over at least MIN_PAIRS_FOR_BIAS pairs (Dubois et al. 2024, "Length-Controlled
  AlpacaEval", on judges preferring longer answers).
"""

from __future__ import annotations

from typing import Any

MAX_ERROR_RATE = 0.1
MAX_DEGENERATE_RATE = 0.05
MAX_TOP_SCORE_SHARE = 0.9
MIN_ORDER_AGREEMENT = 0.7
LENGTH_BIAS = (0.3, 0.7)
MIN_PAIRS_FOR_BIAS = 10
MIN_ROWS_FOR_SPREAD = 3

Figure = tuple[str, str, str | None]  # name, value, warning (None: nothing to flag)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _rate(name: str, count: int, total: int, limit: float, warning: str) -> Figure:
    rate = count / total if total else None
    return name, f"{count} of {total} ({_pct(rate)})", warning if rate is not None and rate > limit else None


def _length_bias(name: str, share: float | None, pairs: int) -> Figure:
    flagged = share is not None and pairs >= MIN_PAIRS_FOR_BIAS and not LENGTH_BIAS[0] <= share <= LENGTH_BIAS[1]
    return name, f"{_pct(share)} of {pairs}", "length bias: the longer side wins far from half the time" if flagged else None


def _generate(stats: list[dict[str, Any]]) -> list[Figure]:
    generated = stats[0]["kept"]
    failed = sum(stats[0]["dropped"].values())
    figures = [_rate("request errors", failed, generated + failed, MAX_ERROR_RATE, "many requests failed")]
    dropped: dict[str, int] = {}
    for s in stats[1:]:
        for reason, count in s["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
    degenerate = dropped.get("repetitive", 0) + dropped.get("empty", 0)
    if any(r in dropped for r in ("repetitive", "empty", "truncated")):
        figures.append(_rate("degenerate (repetitive or empty)", degenerate, generated, MAX_DEGENERATE_RATE, "the generator often loops or says nothing"))
        figures.append(_rate("cut off at max_tokens", dropped.get("truncated", 0), generated, MAX_ERROR_RATE, "many answers hit max_tokens"))
    return figures


def _judge(s: dict[str, Any]) -> list[Figure]:
    if s.get("mode") == "pairwise":
        comparisons = s.get("comparisons") or 0
        decided = comparisons - (s.get("errors") or 0)
        agreement = s.get("consistency_rate")
        figures = [
            _rate("comparisons with an error", s.get("errors") or 0, comparisons, MAX_ERROR_RATE, "many verdicts did not parse or were degenerate"),
            ("degenerate verdicts", str(s.get("degenerate_verdicts", 0)), None),
            ("agreement of the two orders", f"{_pct(agreement)} of {decided}",
             "verdicts often flip with the order of the answers" if agreement is not None and agreement < MIN_ORDER_AGREEMENT else None),
        ]
        wins = decided - (s.get("ties") or 0)
        return figures + [_length_bias("the longer answer wins", s.get("winner_longer_rate"), wins)]
    judged = s.get("judged") or 0
    scored = judged - (s.get("errors") or 0)
    distinct, top = s.get("distinct_scores"), s.get("top_score_share")
    same = scored >= MIN_ROWS_FOR_SPREAD and distinct is not None and (distinct <= 1 or (top is not None and top >= MAX_TOP_SCORE_SHARE))
    spread = f"{distinct} distinct scores, std {s.get('score_std')}, most common score on {_pct(top)} of rows" if distinct is not None else "-"
    return [
        _rate("errors (no score)", s.get("errors") or 0, judged, MAX_ERROR_RATE, "many verdicts did not parse or were degenerate"),
        _rate("degenerate verdicts", s.get("degenerate") or 0, judged, MAX_DEGENERATE_RATE, "the judge's rationales loop or parrot the answer"),
        ("score spread", spread, "the judge gives (nearly) everyone the same score" if same else None),
    ]


def _revise(s: dict[str, Any]) -> list[Figure]:
    candidates = s.get("candidates") or 0
    kinds = s.get("error_kinds") or {}
    degenerate = sum(count for kind, count in kinds.items() if kind.startswith("revision: ") and not kind.startswith(("revision: backend", "revision: empty", "revision: cut off")))
    return [
        _rate("errors (no revision)", s.get("errors") or 0, candidates, MAX_ERROR_RATE, "many critiques or revisions failed"),
        _rate("degenerate revisions", degenerate, candidates, MAX_DEGENERATE_RATE, "revisions describe revising, restate the critique or loop"),
        ("unchanged revisions", str(s.get("unchanged", 0)), None),
    ]


def kept_errors(stage: dict[str, Any]) -> int:
    """Rows a stage recorded an error on but did not drop (a judge or revise step with on_error:
    keep): they are alive, but never passed the step."""
    summary = stage.get("summary")
    if not isinstance(summary, dict) or not isinstance(summary.get("errors"), int) or not ("rubric" in summary or "constitution" in summary):
        return 0
    if summary.get("mode") == "pairwise":
        return 0  # errors there count comparisons, not rows
    dropped = stage["dropped"].get("judge_error", 0) + stage["dropped"].get("revise_error", 0)
    return max(summary["errors"] - dropped, 0)


def trust(stage_stats: list[dict[str, Any]], output: dict[str, Any] | None = None) -> list[tuple[str, list[Figure]]]:
    """[(step label, [(figure, value, warning or None), ...]), ...] for the generator, every judge
    and revise step, and the pairs written. `stage_stats` as datagen.run.executor.summarize returns it."""
    if not stage_stats:
        return []
    sections = [("generate", _generate(stage_stats))]
    for s in stage_stats[1:]:
        summary = s.get("summary")
        if not isinstance(summary, dict):
            continue
        if "rubric" in summary and "mode" in summary:
            sections.append((s["stage"], _judge(summary)))
        elif "constitution" in summary:
            sections.append((s["stage"], _revise(summary)))
    delta = (output or {}).get("length_delta_chars")
    if isinstance(delta, dict) and "chosen_longer" in delta:
        sections.append(("pairs", [_length_bias("chosen side is the longer one", delta["chosen_longer"], int((output or {}).get("pairs") or 0))]))
    return sections


def card_lines(stage_stats: list[dict[str, Any]], output: dict[str, Any] | None = None) -> list[str]:
    """The trust figures as the dataset card's Markdown section (empty when there are none)."""
    sections = trust(stage_stats, output)
    if not sections:
        return []
    lines = ["", "## Trust", "", "| step | figure | value | warning |", "|---|---|---|---|"]
    for step, figures in sections:
        lines += [f"| {step} | {name} | {value} | {'**' + warning + '**' if warning else '-'} |" for name, value, warning in figures]
    return lines

"""When a step's figure is flagged in the report's and the card's trust section.

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

MAX_ERROR_RATE = 0.1
MAX_DEGENERATE_RATE = 0.05
MAX_TOP_SCORE_SHARE = 0.9
MIN_ORDER_AGREEMENT = 0.7
LENGTH_BIAS = (0.3, 0.7)
MIN_PAIRS_FOR_BIAS = 10
MIN_ROWS_FOR_SPREAD = 3

Figure = tuple[str, str, str | None]  # name, value, warning (None: nothing to flag)


def pct(value: float | None) -> str:
    """A share as a percentage with one decimal, '-' when unknown."""
    return "-" if value is None else f"{value:.1%}"


def rate(name: str, count: int, total: int, limit: float, warning: str) -> Figure:
    """`count of total (share)`, flagged with `warning` when the share is above `limit`."""
    share = count / total if total else None
    return name, f"{count} of {total} ({pct(share)})", warning if share is not None and share > limit else None


def length_bias(name: str, share: float | None, pairs: int) -> Figure:
    """The share of `pairs` the longer side won, flagged outside LENGTH_BIAS (with enough pairs)."""
    flagged = share is not None and pairs >= MIN_PAIRS_FOR_BIAS and not LENGTH_BIAS[0] <= share <= LENGTH_BIAS[1]
    return name, f"{pct(share)} of {pairs}", "length bias: the longer side wins far from half the time" if flagged else None

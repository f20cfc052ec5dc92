"""Splitting a budget across clusters in proportion to their weights, in whole units."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction


def allocate(weights: Sequence[float], total: int) -> list[int]:
    """Largest-remainder (Hamilton) apportionment: each cluster gets the floor of its exact quota
    total * w / sum(w), and the units left over go to the largest fractional remainders (ties: the
    larger weight, then the earlier cluster). The counts add up to exactly `total`, a zero weight
    gets nothing, and no count differs from its quota by a whole unit or more.

    Exact in rational arithmetic, so float rounding can neither lose a unit nor invent one.
    """
    if total < 0:
        raise ValueError(f"the budget must be >= 0 (got {total})")
    for w in weights:
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"weights must be finite and >= 0 (got {w})")
    exact = [Fraction(w) for w in weights]
    whole = sum(exact)
    if total == 0:
        return [0] * len(exact)
    if whole == 0:
        raise ValueError("every weight is zero: there is nothing to allocate the budget to")
    quotas = [total * w / whole for w in exact]
    counts = [math.floor(q) for q in quotas]
    left = total - sum(counts)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), -exact[i], i))
    for i in order[:left]:
        counts[i] += 1
    return counts

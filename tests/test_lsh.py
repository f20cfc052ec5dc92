"""The LSH greedy pass against a brute-force keep-first over the same candidate graph."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.text.lsh import candidate_pairs, greedy_clusters, shared_buckets


class MatrixSimilarity:
    def __init__(self, sims: np.ndarray):
        self.sims = sims
        self.asked: list[tuple[int, int]] = []

    def pairs(self, a, b):
        self.asked += list(zip(a.tolist(), b.tolist()))
        return self.sims[a, b]



def brute_force(keys: np.ndarray, sims: np.ndarray, threshold: float) -> np.ndarray:
    """Dropped flags: a text goes when a kept earlier text shares a band key with it and is similar enough."""
    n = len(keys)
    dropped = np.zeros(n, dtype=bool)
    for t in range(n):
        dropped[t] = any(not dropped[e] and (keys[e] == keys[t]).any() and sims[t, e] >= threshold for e in range(t))
    return dropped


@pytest.mark.parametrize("seed", range(40))
def test_greedy_equals_brute_force_keep_first(seed):
    rng = np.random.default_rng(seed)
    n, bands = int(rng.integers(2, 60)), int(rng.integers(1, 5))
    # Few distinct keys make big shared buckets, chains of duplicates of duplicates and false candidates.
    keys = rng.integers(0, int(rng.integers(2, 12)), size=(n, bands)).astype(np.uint64)
    sims = rng.random((n, n))
    sims = (sims + sims.T) / 2
    threshold = float(rng.choice([0.3, 0.5, 0.7]))
    similarity = MatrixSimilarity(sims)

    kept_of, found = greedy_clusters(keys, similarity, threshold)

    expected = brute_force(keys, sims, threshold)
    dropped = kept_of != np.arange(n)
    assert dropped.tolist() == expected.tolist()
    for t in np.flatnonzero(dropped):
        e = kept_of[t]
        assert e < t and not dropped[e] and (keys[e] == keys[t]).any()
        assert found[t] == sims[t, e] >= threshold
    assert (found[~dropped] == 1.0).all()
    for t in range(n):  # each text compared once, with exactly the kept earlier texts it shares a band with
        kept_candidates = {e for e in range(t) if not dropped[e] and (keys[e] == keys[t]).any()}
        assert {e for a, e in similarity.asked if a == t} == kept_candidates
    assert len(similarity.asked) == len(set(similarity.asked))
    best = {t: max((sims[t, e], -e) for a, e in similarity.asked if a == t) for t in np.flatnonzero(dropped)}
    assert all(kept_of[t] == -best[t][1] for t in best), "the most similar kept candidate, earliest on ties"


def test_no_shared_bucket_compares_nothing():
    keys = np.arange(12, dtype=np.uint64).reshape(4, 3)
    similarity = MatrixSimilarity(np.ones((4, 4)))
    kept_of, found = greedy_clusters(keys, similarity, 0.5)
    assert kept_of.tolist() == [0, 1, 2, 3] and similarity.asked == []


def test_shared_buckets_and_candidate_pairs():
    keys = np.array([[1, 5], [2, 5], [1, 6], [3, 7]], dtype=np.uint64)
    bucket, text = shared_buckets(keys)
    groups = sorted(tuple(text[bucket == b].tolist()) for b in np.unique(bucket))
    assert groups == [(0, 1), (0, 2)]
    others = np.array([[9, 5], [3, 9], [1, 6]], dtype=np.uint64)
    a, b = candidate_pairs(keys, others)
    assert list(zip(a.tolist(), b.tolist())) == [(0, 0), (0, 2), (1, 0), (2, 2), (3, 1)]

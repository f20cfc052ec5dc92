"""Locality-sensitive hashing over band keys (`datagen.text.minhash.band_keys`): buckets of texts that
agree in a band, the keep-first greedy pass that turns confirmed candidates into clusters, and
candidate pairs between two sets. Everything here works on arrays of keys; whether a candidate
really is a duplicate is asked of a `Similarity`."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import polars as pl

from datagen.text.minhash import run_starts, segments, sorted_unique


class Similarity(Protocol):
    def pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Similarity of a[i] and b[i] for each i, vectorized."""


def shared_buckets(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bucket, text) for every text in a bucket of two or more, ordered by bucket then text.
    A bucket is a band and a key in it; bucket ids are consecutive from 0."""
    buckets, texts, next_id = [], [], 0
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        column = keys[order, band]
        starts = np.flatnonzero(run_starts(column))
        sizes = np.diff(np.append(starts, len(column)))
        run = np.repeat(np.arange(len(starts)), sizes)
        shared = sizes[run] >= 2
        runs = run[shared]
        compact = np.cumsum(run_starts(runs)) - 1
        buckets.append(compact + next_id)
        texts.append(order[shared])
        next_id += int((sizes >= 2).sum())
    return np.concatenate(buckets).astype(np.int64), np.concatenate(texts).astype(np.int64)


def greedy_clusters(keys: np.ndarray, similarity: Similarity, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep-first over texts in row order: a text is dropped when it is within the threshold of a
    kept text before it that shares a band with it. Returns per text the kept text it belongs to
    (the most similar candidate, earliest on ties; itself when kept) and the similarity to it
    (1.0 when kept).

    Decided in rounds, all at once per round: a text is ready when every earlier text it shares a
    bucket with is decided; it is then compared with the kept ones among them. Each text is
    compared once with exactly the candidates a one-by-one pass would compare it with."""
    n = len(keys)
    kept_of, sims = np.arange(n), np.ones(n)
    bucket, text = shared_buckets(keys)
    undecided = np.zeros(n, dtype=bool)
    undecided[text] = True
    kept = ~undecided
    while len(bucket):
        start = _bucket_starts(bucket)
        waiting = undecided[text]
        blocked = np.zeros(n, dtype=bool)
        blocked[text[waiting & (_earlier_in_bucket(waiting, start) > 0)]] = True
        ready_entry = waiting & ~blocked[text]
        ready = sorted_unique(text[ready_entry])

        # (ready text, earlier kept text) for every bucket they share, each pair once
        is_kept = kept[text]
        kept_before = _earlier_in_bucket(is_kept, start)
        asking = np.flatnonzero(ready_entry & (kept_before > 0))
        kept_entries = np.flatnonzero(is_kept)
        first_kept = np.searchsorted(kept_entries, start[:-1][bucket[asking]])
        offsets = np.stack((first_kept, first_kept + kept_before[asking]), axis=1).ravel()
        at, owner = segments(offsets, 2 * np.arange(len(asking)))
        pairs = sorted_unique(text[asking][owner] * n + text[kept_entries[at]])
        if len(pairs):
            found = similarity.pairs(pairs // n, pairs % n)
            hit = found >= threshold
            a, b, s = best_match(pairs[hit] // n, pairs[hit] % n, found[hit])
            kept_of[a], sims[a] = b, s
        undecided[ready] = False
        kept[ready] = kept_of[ready] == ready

        # Buckets with nothing left to decide drop out.
        live = np.zeros(len(start) - 1, dtype=bool)
        live[bucket[undecided[text]]] = True
        keep = live[bucket]
        bucket, text = bucket[keep], text[keep]
        bucket = np.cumsum(run_starts(bucket)) - 1
    return kept_of, sims


def best_match(a: np.ndarray, b: np.ndarray, similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct a, its pair with the highest similarity (the smallest b among equals)."""
    order = np.lexsort((b, -similarity, a))
    first = order[run_starts(a[order])]
    return a[first], b[first], similarity[first]


def _bucket_starts(bucket: np.ndarray) -> np.ndarray:
    """Entry index where each bucket starts, and the number of entries at the end."""
    return np.append(np.flatnonzero(run_starts(bucket)), len(bucket))


def _earlier_in_bucket(flag: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per entry, how many entries before it in its bucket have the flag."""
    before = np.cumsum(flag) - flag
    return before - np.repeat(before[start[:-1]], np.diff(start))


def candidate_pairs(keys: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row of keys, row of others) that agree in at least one band, each pair once."""
    found = []
    for band in range(keys.shape[1]):
        left = pl.DataFrame({"a": np.arange(len(keys)), "key": keys[:, band]})
        right = pl.DataFrame({"b": np.arange(len(others)), "key": others[:, band]})
        found.append(left.join(right, on="key").select("a", "b"))
    pairs = pl.concat(found).unique().sort("a", "b")
    return pairs["a"].to_numpy(), pairs["b"].to_numpy()


"""MinHash signatures for many texts at once: word shingles hashed and permuted in NumPy.

Each distinct word is hashed once (xxh3, stable across processes), n-grams are combined with
array arithmetic, and the permutations are datasketch's "affine32" ones, so a signature equals
`datasketch.MinHash(num_perm, seed, hashfunc=identity)` updated with the 32-bit shingle hashes
and can be indexed by `MinHashLSH` as a `LeanMinHash`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import xxhash
from datasketch import LeanMinHash, MinHash

SCHEME = "affine32"
# Band layouts are chosen so that a pair exactly at the threshold becomes a candidate with at
# least this probability; candidates are confirmed with exact Jaccard, so extra ones cost only time.
TARGET_RECALL = 0.99
_CHUNK = 16384  # shingles per permutation block: a (chunk x num_perm) uint32 matrix
_MIX = np.uint64(0x9E3779B97F4A7C15)


def normalize(texts: pl.Series) -> pl.Series:
    """Lowercase, punctuation to spaces, runs of whitespace to one space."""
    return (
        texts.str.to_lowercase()
        .str.replace_all(r"[^\w\s]|_", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix datasketch applies before affine32 permutations."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


@dataclass
class Shingles:
    """The word n-gram hashes of each text, in text order: text i owns hashes[offsets[i]:offsets[i + 1]]."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len = texts + 1
    _distinct: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, i: int) -> np.ndarray:
        """Text i's distinct shingles, sorted. Computed on demand: only texts that meet an LSH
        candidate need them, and sorting every text's shingles up front costs more than hashing."""
        found = self._distinct.get(i)
        if found is None:
            found = self._distinct[i] = np.unique(self.hashes[self.offsets[i] : self.offsets[i + 1]])
        return found


def shingle(normalized: pl.Series, size: int) -> Shingles:
    """Word `size`-grams of texts as `normalize` returns them. A text shorter than `size` words is
    one shingle (all its words), so short texts still compare; an empty or null text has none."""
    words = normalized.set(normalized == "", None).str.split(" ")
    lengths = words.list.len().fill_null(0).to_numpy().astype(np.int64)
    tokens = words.explode().drop_nulls()
    vocabulary = tokens.unique()
    vocabulary_hashes = np.fromiter(
        (xxhash.xxh3_64_intdigest(word.encode()) for word in vocabulary), dtype=np.uint64, count=len(vocabulary)
    )
    token_hashes = tokens.replace_strict(vocabulary, pl.Series(vocabulary_hashes), return_dtype=pl.UInt64).to_numpy()

    per_text = np.where(lengths == 0, 0, np.maximum(lengths - size + 1, 1))
    width = np.minimum(lengths, size)
    text_of = np.repeat(np.arange(len(lengths)), per_text)
    first_token = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    offsets = np.concatenate(([0], np.cumsum(per_text))).astype(np.int64)
    start = first_token[text_of] + (np.arange(len(text_of)) - offsets[text_of])
    widths = width[text_of]
    combined = np.zeros(len(text_of), dtype=np.uint64)
    last = max(len(token_hashes) - 1, 0)
    for j in range(size):
        take = j < widths
        if not take.any():
            break
        combined = np.where(take, combined * _MIX + token_hashes[np.minimum(start + j, last)], combined)
    return Shingles(_fmix64(combined), offsets)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted sets of distinct shingle hashes."""
    if not len(a) and not len(b):
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (len(a) + len(b) - inter)


def shingle_hash32(hashes: np.ndarray) -> np.ndarray:
    """The 32-bit value MinHash sees for each 64-bit shingle hash."""
    return (hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32)


class MinHasher:
    """Signatures for all texts of a `Shingles` at once, with datasketch's permutations for (num_perm, seed)."""

    def __init__(self, num_perm: int, seed: int):
        self.num_perm = num_perm
        self.seed = seed
        self.a, self.b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations

    def signatures(self, shingles: Shingles) -> np.ndarray:
        """(texts x num_perm) uint32; a text without shingles keeps the empty sentinel (all max)."""
        sig = np.full((len(shingles), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        counts = shingles.counts()
        text_of = np.repeat(np.arange(len(shingles)), counts)
        mixed = _fmix32(shingle_hash32(shingles.hashes))
        for lo in range(0, len(mixed), _CHUNK):
            block_texts = text_of[lo : lo + _CHUNK]
            permuted = mixed[lo : lo + _CHUNK, None] * self.a[None, :] + self.b[None, :]
            starts = np.flatnonzero(np.concatenate(([True], block_texts[1:] != block_texts[:-1])))
            texts = block_texts[starts]
            sig[texts] = np.minimum(sig[texts], np.minimum.reduceat(permuted, starts, axis=0))
        return sig

    def lean(self, signature: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)


def band_recall(threshold: float, bands: int, rows: int) -> float:
    """Probability that a pair at exactly `threshold` Jaccard shares at least one LSH band."""
    return 1.0 - (1.0 - threshold**rows) ** bands


def lsh_params(threshold: float, num_perm: int, bands: int | None = None) -> tuple[int, int]:
    """(bands, rows per band). Unless given, the longest bands (fewest false candidates) that still
    reach TARGET_RECALL at the threshold: datasketch's own optimum (9 x 13 at 0.8 / 128) balances
    false positives against misses and lost about a quarter of true pairs in our measurement."""
    if bands is not None:
        return bands, num_perm // bands
    for rows in range(num_perm // 2, 0, -1):
        if band_recall(threshold, num_perm // rows, rows) >= TARGET_RECALL:
            return num_perm // rows, rows
    return num_perm, 1

"""Token shingles and MinHash signatures for many texts at once, in NumPy and polars.

Texts are normalised and split into tokens by `datagen.text.normalize` (words; one character per token in
scripts written without spaces; symbols for texts without letters or digits), and shingles are
`size` consecutive tokens.

Signatures are one-permutation MinHash (Li, Owen & Zhang 2012) with optimal densification
(Shrivastava 2017): each shingle is hashed once, its hash picks one of `num_perm` bins and each
bin keeps its smallest value; an empty bin borrows the value of a bin picked by a fixed sequence
of hashes. Two texts agree in a bin with probability equal to their Jaccard
similarity, as with `num_perm` independent permutations, at the cost of one hash per shingle
instead of `num_perm`. Candidates found through LSH bands are always confirmed with exact Jaccard.

Word hashes come from polars' `Series.hash` with a fixed seed: stable within one polars version,
which is all a run needs (verdicts are decided in one process and stored).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from datagen.text.normalize import tokenize

# Band layouts are chosen so that a pair exactly at the threshold becomes a candidate with at
# least this probability; candidates are confirmed with exact Jaccard, so extra ones cost only time.
TARGET_RECALL = 0.99
WORD_SEED = 0x5EED
_MIX = np.uint64(0x9E3779B97F4A7C15)
_LOW32 = np.uint64(0xFFFFFFFF)
EMPTY = np.uint32(0xFFFFFFFF)  # a bin no shingle fell into


def words(texts: pl.Series) -> pl.Series:
    """Each text's tokens (`datagen.text.normalize.tokenize`): a null text gives null, an empty one []."""
    return tokenize(texts)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit moves every output bit."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


@dataclass
class Shingles:
    """The token n-gram hashes of each text, in text order: text i owns hashes[offsets[i]:offsets[i + 1]].
    `text_keys` identify each text's token sequence (equal keys: same tokens in the same order)."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len = texts + 1
    text_keys: np.ndarray | None  # (texts, 2) uint64
    _distinct: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, i: int) -> np.ndarray:
        """Text i's distinct shingles, sorted, computed on demand and kept."""
        found = self._distinct.get(i)
        if found is None:
            found = self._distinct[i] = np.unique(self.hashes[self.offsets[i] : self.offsets[i + 1]])
        return found


def segments(offsets: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the concatenated segments `which` (segment i is offsets[i]:offsets[i + 1]), and
    for each position the index into `which` it belongs to."""
    starts, lengths = offsets[which], offsets[which + 1] - offsets[which]
    owner = np.repeat(np.arange(len(which)), lengths)
    first = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    return starts[owner] + (np.arange(len(owner)) - first[owner]), owner


def shingle(texts: pl.Series, size: int, text_keys: bool = False) -> Shingles:
    """Token `size`-grams of raw texts (normalised and tokenised here). A text shorter than `size`
    tokens is one shingle (all its tokens), so short texts still compare; an empty or null text has
    none. With text_keys, also each text's key of its token sequence (`Shingles.text_keys`)."""
    split = words(texts)
    lengths = split.list.len().fill_null(0).to_numpy().astype(np.int64)
    tokens = split.explode().drop_nulls().hash(WORD_SEED).to_numpy()
    token_offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)

    per_text = np.where(lengths == 0, 0, np.maximum(lengths - size + 1, 1))
    offsets = np.concatenate(([0], np.cumsum(per_text))).astype(np.int64)
    # The n-gram starting at every token, over the whole token array; a text's n-grams are those
    # starting at its first lengths - size + 1 tokens (later ones cross into the next text).
    total = len(tokens)
    combined = np.zeros(total, dtype=np.uint64)
    for j in range(size):
        combined[: total - j] = combined[: total - j] * _MIX + tokens[j:]
    position = np.arange(total) - np.repeat(token_offsets[:-1], lengths)
    hashes = combined[position < np.repeat(per_text, lengths)]
    short = np.flatnonzero((lengths > 0) & (lengths < size))
    if len(short):  # one shingle of all its words: the n-gram of its first `length` tokens
        short_hash = np.zeros(len(short), dtype=np.uint64)
        for j in range(size - 1):
            take = j < lengths[short]
            short_hash = np.where(take, short_hash * _MIX + tokens[np.minimum(token_offsets[short] + j, total - 1)], short_hash)
        hashes[offsets[short]] = short_hash
    hashes = fmix64(hashes)
    return Shingles(hashes, offsets, _text_keys(tokens, token_offsets, position) if text_keys else None)


def _position_mixes(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Two fixed random 64-bit values per token position (the first odd), for `_text_keys`."""
    at = np.arange(length, dtype=np.uint64)
    return fmix64(at * _MIX + np.uint64(1)) | np.uint64(1), fmix64(at * _MIX + np.uint64(2))


def _text_keys(tokens: np.ndarray, offsets: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Per text, a 128-bit key of its token sequence: the sum of token hash x a random odd value
    of its position, and the xor of token hash + another random value of its position, plus the
    token count in the first word. Texts with the same tokens in another order get other keys
    (whatever the shingle size), so exact duplicates are the same tokens in the same order."""
    counts = np.diff(offsets)
    keys = np.zeros((len(counts), 2), dtype=np.uint64)
    nonempty = np.flatnonzero(counts)
    if len(nonempty):
        times, plus = _position_mixes(int(counts.max()))
        keys[nonempty, 0] = np.add.reduceat(tokens * times[position], offsets[nonempty]) + counts[nonempty].astype(np.uint64)
        keys[nonempty, 1] = np.bitwise_xor.reduceat(tokens + plus[position], offsets[nonempty])
    return keys


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted sets of distinct shingle hashes."""
    if not len(a) and not len(b):
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (len(a) + len(b) - inter)


def run_starts(values: np.ndarray) -> np.ndarray:
    """For grouped (e.g. sorted) values: True where a run of equal values begins."""
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = values[1:] != values[:-1]
    return starts


def sorted_unique(values: np.ndarray) -> np.ndarray:
    values = np.sort(values)  # np.unique is many times slower than a sort for int64 here
    return values[run_starts(values)]


def _dense_rank(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value's rank among the distinct values (0..), and how many there are."""
    order = np.argsort(values)
    ordered = values[order]
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.cumsum(run_starts(ordered)) - 1
    return rank, int(rank.max()) + 1 if len(rank) else 1


def pair_jaccard(shingles: Shingles, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of texts a[i] and b[i] for every i, vectorized: shingles become
    dense ranks, so (pair, rank) fits one integer and a sort finds every shared shingle."""
    if not len(a):
        return np.zeros(0)
    rank, width = _dense_rank(shingles.hashes)
    owner = np.repeat(np.arange(len(shingles), dtype=np.int64), shingles.counts())
    distinct = sorted_unique(owner * width + rank)  # each text's distinct ranks, texts in order
    offsets = np.searchsorted(distinct // width, np.arange(len(shingles) + 1))
    sizes = np.diff(offsets)
    in_a, pair_a = segments(offsets, a)
    in_b, pair_b = segments(offsets, b)
    keys = np.concatenate((pair_a * width + distinct[in_a] % width, pair_b * width + distinct[in_b] % width))
    keys.sort()
    shared = keys[1:][keys[1:] == keys[:-1]] // width
    inter = np.bincount(shared, minlength=len(a)).astype(float)
    union = sizes[a] + sizes[b] - inter
    return np.divide(inter, union, out=np.ones(len(a)), where=union > 0)


class MinHasher:
    """One-permutation MinHash signatures with `num_perm` bins for every text of a `Shingles`."""

    def __init__(self, num_perm: int, seed: int):
        self.num_perm = num_perm
        self.salt = fmix64(np.array([seed], dtype=np.uint64) + _MIX)[0]
        self._sources = np.zeros((0, num_perm), dtype=np.int64)

    def signatures(self, shingles: Shingles) -> np.ndarray:
        """(texts x num_perm) uint32; a text without shingles is all EMPTY."""
        n, k = len(shingles), self.num_perm
        h = shingles.hashes ^ self.salt  # already mixed: the salt only makes another seed another sketch
        cell = np.repeat(np.arange(n, dtype=np.uint64) * np.uint64(k), shingles.counts())
        cell += ((h >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)  # the bin: the high half picks it
        sig = np.full(n * k, EMPTY, dtype=np.uint32)
        if n * k < 2**32:  # sorting (cell, value) packed in one word puts each bin's minimum first
            packed = np.sort((cell << np.uint64(32)) | (h & _LOW32))
            cells = packed >> np.uint64(32)
            first = run_starts(cells)
            sig[cells[first].astype(np.int64)] = (packed[first] & _LOW32).astype(np.uint32)
        else:
            np.minimum.at(sig, cell.astype(np.int64), (h & _LOW32).astype(np.uint32))
        self._densify(sig, n)
        return sig.reshape(n, k)

    def _densify(self, sig: np.ndarray, n: int) -> None:
        """Fill each empty bin of a non-empty text with the value of another bin, chosen by a
        sequence of hashes of (bin, attempt) that is the same for every text: the first non-empty
        one (optimal densification, Shrivastava 2017), so filled bins are as independent as full ones."""
        k = self.num_perm
        empty = (sig == EMPTY).reshape(n, k)
        cell = np.flatnonzero(empty & ~empty.all(axis=1, keepdims=True))
        col = cell % k
        base = cell - col
        attempt = 0
        while len(cell):  # a text with m full bins of k needs about k/m attempts per empty bin
            if attempt == len(self._sources):
                self._sources = np.concatenate((self._sources, self._more_sources(max(attempt, 8))))
            value = sig[base + self._sources[attempt][col]]
            attempt += 1
            found = value != EMPTY
            sig[cell[found]] = value[found]
            left = ~found
            cell, col, base = cell[left], col[left], base[left]

    def _more_sources(self, count: int) -> np.ndarray:
        """(count, num_perm): the bin each bin borrows from at the next `count` attempts."""
        k = self.num_perm
        attempt = np.arange(len(self._sources) + 1, len(self._sources) + count + 1, dtype=np.uint64)
        mixed = fmix64(attempt[:, None] * np.uint64(0xD6E8FEB86659FD93) + np.arange(k, dtype=np.uint64)[None, :] * _MIX + self.salt)
        return (((mixed >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)).astype(np.int64)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(texts x bands) uint32: one hash per band of `rows` consecutive signature values. 32 bits
    halve the memory of the largest array a dedup keeps; the chance collisions they add (about
    n^2 / 2^33 per band) are only extra candidates, which exact Jaccard turns away."""
    n = len(signatures)
    grouped = signatures[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    keys = np.zeros((n, bands), dtype=np.uint64)
    for r in range(rows):
        keys = fmix64(keys * _MIX + grouped[:, :, r])
    return (keys >> np.uint64(32)).astype(np.uint32)


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

"""Exact Jaccard similarity of word shingles, for ground truth: every pair at or above a threshold.

Written independently of datagen.text.minhash (shingles are strings hashed by polars). All pairs come
from a prefix-filter similarity join (Bayardo et al., "Scaling up all pairs similarity search"):
with shingles in one global order (rarest first), two sets with Jaccard >= t must share a shingle
among the first |x| - ceil(t |x|) + 1 of each, so only pairs sharing a prefix shingle are
compared, and every candidate is then checked exactly. The result is exact, not sampled.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def normalized_words(texts: list[str]) -> pl.Series:
    """The similarity's definition of a word: lowercase, punctuation (and _) to spaces."""
    normalized = pl.Series(texts).str.to_lowercase().str.replace_all(r"[^\w\s]|_", " ").str.strip_chars()
    return normalized.str.split(by=" ").list.eval(pl.element().filter(pl.element() != ""))


def shingle_table(texts: list[str], size: int) -> pl.DataFrame:
    """(doc, h): each document's distinct word `size`-grams as 64-bit hashes; a shorter text is one shingle."""
    words = pl.DataFrame({"doc": np.arange(len(texts)), "w": normalized_words(texts)}).explode("w").drop_nulls("w")
    words = words.with_columns(n=pl.len().over("doc"), pos=pl.int_range(pl.len()).over("doc"))
    grams = pl.concat_str([pl.col("w").shift(-k).over("doc") for k in range(size)], separator=" ")
    whole = pl.col("w").implode().list.join(" ").over("doc")
    shingles = words.with_columns(s=pl.when(pl.col("n") < size).then(whole).otherwise(grams)).filter(
        pl.when(pl.col("n") < size).then(pl.col("pos") == 0).otherwise(pl.col("s").is_not_null())
    )
    return shingles.select("doc", h=pl.col("s").hash(seed=0)).unique()


def jaccard_of(table: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """Exact Jaccard of (a, b) document pairs, from a shingle_table."""
    sizes = table.group_by("doc").len("size")
    inter = (
        pairs.join(table, left_on="a", right_on="doc")
        .join(table, left_on=["b", "h"], right_on=["doc", "h"], how="semi")
        .group_by("a", "b")
        .len("inter")
    )
    return (
        pairs.join(inter, on=["a", "b"], how="left")
        .with_columns(pl.col("inter").fill_null(0))
        .join(sizes.rename({"doc": "a", "size": "size_a"}), on="a", how="left")
        .join(sizes.rename({"doc": "b", "size": "size_b"}), on="b", how="left")
        .with_columns(jaccard=pl.col("inter") / (pl.col("size_a").fill_null(0) + pl.col("size_b").fill_null(0) - pl.col("inter")))
        .select("a", "b", pl.col("jaccard").fill_nan(1.0))
    )


def similar_pairs(table: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """All (a < b, jaccard) with exact Jaccard >= threshold."""
    frequency = table.group_by("h").len("freq")
    ranked = (
        table.join(frequency, on="h")
        .sort("doc", "freq", "h")
        .with_columns(rank=pl.int_range(pl.len()).over("doc"), size=pl.len().over("doc"))
    )
    # The epsilon keeps float rounding (0.8 * 10 = 8.000000000000002) from shortening a prefix.
    prefix = ranked.filter(pl.col("rank") < pl.col("size") - (threshold * pl.col("size") - 1e-9).ceil() + 1).select("doc", "h", "size")
    candidates = (
        prefix.join(prefix, on="h", suffix="_b")
        .filter(pl.col("doc") < pl.col("doc_b"))
        # Length filter: |b| >= t |a| and |a| >= t |b|, or their Jaccard cannot reach t.
        .filter((pl.col("size_b") >= threshold * pl.col("size") - 1e-9) & (pl.col("size") >= threshold * pl.col("size_b") - 1e-9))
        .select(a="doc", b="doc_b")
        .unique()
    )
    return jaccard_of(table, candidates).filter(pl.col("jaccard") >= threshold - 1e-12).sort("a", "b")

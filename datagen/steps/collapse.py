"""Collapse detection: near-duplicate siblings, near-identical outputs across prompts, repeated
openings and distinct-n, per template and per persona; stops a run whose generator collapsed.

Definitions (all over the rows alive when the stage starts):
- sibling duplicate: samples of one prompt are taken in sample_index order; a sample whose
  cosine to an already kept sibling exceeds `sibling_threshold` is dropped.
- cross-set cluster: connected component of the graph "cosine > cluster_threshold" that holds
  outputs of at least two prompts (siblings alone are the sibling check's business).
- repeated prefix: an output of at least `prefix_tokens` tokens whose first `prefix_tokens`
  tokens also open an output of another prompt. Tokens are `datagen.text.normalize`'s (NFKC, lowercased,
  punctuation ignored; words, or single characters in scripts written without spaces), as are
  the n-grams of distinct-n.
- a row is collapsed when it is in a cross-set cluster or has a repeated prefix; a group's
  collapse rate is the fraction of its rows that are collapsed. A template or persona with at
  least `min_group_size` rows and a collapse rate above `max_collapse_rate` stops the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field

from datagen.text.embeddings import DEFAULT_MODEL, connected_labels, encode, load_encoder, similar_pairs
from datagen.errors import DatagenError
from datagen.paths import ModelRef
from datagen.steps.base import FittedVerdicts, RunStep, Scope, StageConfigBase, verdict
from datagen.text.normalize import tokenize

GROUPS = {"template": "template_id", "persona": "persona"}
INPUT_COLUMNS = ["candidate_id", "prompt_id", "sample_index", "template_id", "persona", "completion"]


class CollapseConfig(StageConfigBase):
    stage: Literal["collapse"] = "collapse"
    scope: ClassVar[Scope] = "run"
    model: ModelRef = Field(DEFAULT_MODEL, min_length=1, description="'default' (packaged all-MiniLM-L6-v2), a local folder, or a hub id")
    device: str = Field("cpu", min_length=1, description="torch device for the embedding model")
    batch_size: int = Field(64, ge=1, description="texts per encoder batch")
    sibling_threshold: float = Field(0.95, gt=0, lt=1, description="cosine above which a sample duplicates a kept sibling")
    cluster_threshold: float = Field(0.95, gt=0, lt=1, description="cosine above which outputs of different prompts are near-identical")
    prefix_tokens: int | None = Field(8, ge=1, description="tokens (words; characters in scripts without spaces) of the opening compared across prompts; null turns it off")
    max_collapse_rate: float | None = Field(0.5, ge=0, le=1, description="stop the run above this collapse rate; null only reports")
    min_group_size: int = Field(20, ge=1, description="templates/personas with fewer rows never stop the run")
    drop_cross_set: bool = Field(False, description="also drop every row of a cross-set cluster but its first survivor")
    block_size: int = Field(2048, ge=1, description="tile side of the similarity search (memory ~ block_size^2 floats)")

    def build(self) -> "CollapseStage":
        return CollapseStage(self)


class CollapseStage(RunStep):
    def __init__(self, config: CollapseConfig):
        self.config = config
        self.label = config.label
        self._encoder = None
        self._verdicts: FittedVerdicts | None = None
        self._summary: dict[str, Any] | None = None

    @property
    def encoder(self):
        if self._encoder is None:
            try:
                self._encoder = load_encoder(self.config.model, self.config.device)
            except DatagenError as err:
                err.field = f"{self.label}.model"
                raise
        return self._encoder

    def fit(self, shards: Callable[[], Iterator[pl.DataFrame]]) -> None:
        frames = [frame.select(INPUT_COLUMNS) for frame in shards()]
        rows = pl.concat(frames) if frames else pl.DataFrame(schema={c: pl.String for c in INPUT_COLUMNS} | {"sample_index": pl.Int64})
        rows = rows.with_columns(pl.col("completion").fill_null("")).with_row_index("_i")
        vectors = encode(self.encoder, rows["completion"].to_list(), self.config.batch_size) if rows.height else np.zeros((0, 1), np.float32)
        flagged = self._flag(rows, vectors)
        self._summary = self._statistics(flagged, vectors)
        self._verdicts = FittedVerdicts(flagged.select("candidate_id", *self._columns()))
        self._stop_if_collapsed(self._summary)

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        columns = self._verdicts.lookup(batch) if self._verdicts is not None else None
        if columns is None:  # called without a fit over the whole run: this batch is the whole set
            self.fit(lambda: iter([batch]))
            columns = self._verdicts.lookup(batch)
        return batch.hstack(columns)

    def close(self) -> None:
        """The encoder is released when the step is done (the executor closes every step)."""
        self._encoder = None

    def __getstate__(self) -> dict[str, Any]:
        # A fitted stage is shipped to Ray workers: its verdicts travel, the encoder does not.
        return {**self.__dict__, "_encoder": None}

    def summarize(self, outputs: pl.LazyFrame) -> dict[str, Any]:
        if self._summary is None:  # a resumed run whose shards were all done: recompute from them
            alive = outputs.filter(pl.col(f"{self.label}_keep").is_not_null()).select(INPUT_COLUMNS).collect()
            self.fit(lambda: iter([alive]))
        return self._summary

    def _columns(self) -> list[str]:
        return [f"{self.label}_{c}" for c in ("keep", "reason", "max_sibling_sim", "cluster", "repeated_prefix")]

    def _flag(self, rows: pl.DataFrame, vectors: np.ndarray) -> pl.DataFrame:
        c = self.config
        sibling_duplicate, max_sibling_sim = sibling_verdicts(rows, vectors, c.sibling_threshold)
        root = connected_labels(rows.height, similar_pairs(vectors, c.cluster_threshold, c.block_size))
        words = pl.lit(tokenize(rows["completion"]))
        if c.prefix_tokens is None:
            prefix = pl.lit(None, dtype=pl.String)
        else:
            prefix = pl.when(words.list.len() >= c.prefix_tokens).then(words.list.head(c.prefix_tokens).list.join(" "))
        flagged = rows.with_columns(
            _sibling_duplicate=pl.Series(sibling_duplicate),
            _max_sibling_sim=pl.Series(max_sibling_sim).fill_nan(None),
            _root=pl.Series(root),
            _prefix=prefix,
        ).with_columns(
            _in_cluster=pl.col("prompt_id").n_unique().over("_root") > 1,
            _repeated_prefix=pl.col("_prefix").is_not_null() & (pl.col("prompt_id").n_unique().over("_prefix") > 1),
        )
        first_survivor = pl.col("_i").filter(~pl.col("_sibling_duplicate")).min().over("_root")
        cross_duplicate = pl.col("_in_cluster") & ~pl.col("_sibling_duplicate") & (pl.col("_i") != first_survivor)
        reason = (
            pl.when(pl.col("_sibling_duplicate")).then(pl.lit("sibling_duplicate"))
            .when(cross_duplicate & c.drop_cross_set).then(pl.lit("cross_duplicate"))
        )
        label = self.label
        return flagged.with_columns(
            *verdict(label, reason.is_null(), reason),
            (pl.col("_in_cluster") | pl.col("_repeated_prefix")).alias("_collapsed"),
            pl.col("_max_sibling_sim").alias(f"{label}_max_sibling_sim"),
            pl.when(pl.col("_in_cluster")).then(pl.col("candidate_id").gather(pl.col("_root"))).alias(f"{label}_cluster"),
            pl.col("_repeated_prefix").alias(f"{label}_repeated_prefix"),
        )

    def _statistics(self, flagged: pl.DataFrame, vectors: np.ndarray) -> dict[str, Any]:
        clusters = flagged.filter(pl.col("_in_cluster")).group_by("_root").len()
        summary: dict[str, Any] = {
            "rows": flagged.height,
            "sibling_duplicates": int(flagged["_sibling_duplicate"].sum()),
            "cross_set_clusters": clusters.height,
            "largest_cluster": int(clusters["len"].max()) if clusters.height else 0,
            "rows_in_clusters": int(flagged["_in_cluster"].sum()),
            "rows_with_repeated_prefix": int(flagged["_repeated_prefix"].sum()),
        }
        for kind, column in GROUPS.items():
            summary[f"by_{kind}"] = group_statistics(flagged, vectors, column)
        return summary

    def _stop_if_collapsed(self, summary: dict[str, Any]) -> None:
        c = self.config
        if c.max_collapse_rate is None:
            return
        offenders = [
            f"{kind} {key!r} ({stats['collapse_rate']:.0%} of {stats['rows']} rows)"
            for kind in GROUPS
            for key, stats in summary[f"by_{kind}"].items()
            if stats["rows"] >= c.min_group_size and stats["collapse_rate"] > c.max_collapse_rate
        ]
        if not offenders:
            return
        shown = ", ".join(offenders[:4]) + (f" and {len(offenders) - 4} more" if len(offenders) > 4 else "")
        what = "near-identical to another prompt's output"
        if c.prefix_tokens is not None:
            what += f" or opening with the same {c.prefix_tokens} tokens"
        raise DatagenError(
            f"stage {self.label!r}: the generator collapsed for {shown}: outputs {what} (max_collapse_rate {c.max_collapse_rate})"
        )


def sibling_verdicts(rows: pl.DataFrame, vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row: dropped as a near-duplicate of a kept sibling, and its highest cosine to any sibling."""
    duplicate = np.zeros(rows.height, dtype=bool)
    max_sim = np.full(rows.height, np.nan)
    prompts = rows.sort("sample_index").group_by("prompt_id").agg("_i")
    for members in prompts["_i"].to_list():
        if len(members) < 2:
            continue
        idx = np.asarray(members)
        sims = vectors[idx] @ vectors[idx].T
        np.fill_diagonal(sims, -np.inf)
        max_sim[idx] = sims.max(axis=1)
        kept = [0]
        for a in range(1, len(idx)):
            if sims[a, kept].max() > threshold:
                duplicate[idx[a]] = True
            else:
                kept.append(a)
    return duplicate, max_sim


def group_statistics(flagged: pl.DataFrame, vectors: np.ndarray, column: str) -> dict[str, dict[str, Any]]:
    """Collapse figures, distinct-1/2 and mean pairwise cosine for each value of `column`."""
    rows = flagged.filter(pl.col(column).is_not_null())
    rates = rows.group_by(column).agg(
        pl.len().alias("rows"),
        pl.col("_collapsed").mean().alias("collapse_rate"),
        pl.col("_in_cluster").mean().alias("near_duplicate_rate"),
        pl.col("_repeated_prefix").mean().alias("repeated_prefix_rate"),
        pl.col("_i"),
    )
    distinct = distinct_n(rows, column)
    out: dict[str, dict[str, Any]] = {}
    for row in rates.join(distinct, on=column, how="left").sort(column).iter_rows(named=True):
        out[str(row[column])] = {
            "rows": row["rows"],
            "collapse_rate": _round(row["collapse_rate"]),
            "near_duplicate_rate": _round(row["near_duplicate_rate"]),
            "repeated_prefix_rate": _round(row["repeated_prefix_rate"]),
            "distinct_1": _round(row["distinct_1"]),
            "distinct_2": _round(row["distinct_2"]),
            "mean_pairwise_cosine": _round(mean_pairwise_cosine(vectors[np.asarray(row["_i"])])),
        }
    return out


def distinct_n(rows: pl.DataFrame, column: str) -> pl.DataFrame:
    """Distinct-1 and distinct-2 per group: unique n-grams over all n-grams of the group's outputs."""
    words = (
        rows.select(column, "_i", pl.lit(tokenize(rows["completion"])).alias("word"))
        .explode("word")
        .drop_nulls("word")
        .with_columns(bigram=pl.concat_str(pl.col("word"), pl.col("word").shift(-1).over("_i"), separator=" "))
    )
    unigrams, bigrams = pl.col("word"), pl.col("bigram").drop_nulls()
    return words.group_by(column).agg(
        pl.when(unigrams.count() > 0).then(unigrams.n_unique() / unigrams.count()).alias("distinct_1"),
        pl.when(bigrams.count() > 0).then(bigrams.n_unique() / bigrams.count()).alias("distinct_2"),
    )


def mean_pairwise_cosine(vectors: np.ndarray) -> float | None:
    """Mean cosine over all pairs, from the sum vector: (|sum|^2 - sum |v|^2) / (n (n - 1))."""
    n = len(vectors)
    if n < 2:
        return None
    total = vectors.sum(axis=0, dtype=np.float64)
    squares = float(np.einsum("ij,ij->", vectors, vectors, dtype=np.float64))
    return (float(total @ total) - squares) / (n * (n - 1))


def _round(value: float | None) -> float | None:
    return None if value is None or value != value else round(float(value), 4)

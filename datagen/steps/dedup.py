"""Duplicate candidates: exact (normalized text) then near (MinHash LSH confirmed by exact Jaccard),
optionally decontaminated against a reference set (eval prompts).

Texts are compared as `datagen.text.normalize` normalises and tokenises them (NFKC, lowercase; words, or one
character per token in scripts written without spaces; symbols for texts without letters or
digits): exact duplicates have the same tokens in the same order, near-duplicates a Jaccard
similarity of token `shingle_size`-grams at or above the threshold.

Dedup is global, so the stage decides every verdict in `fit` over all alive rows of the run and
each shard only looks its rows up; a resumed run refits on the same rows and gets the same verdicts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from datagen.errors import DatagenError, first_line
from datagen.text.lsh import best_match, candidate_pairs, greedy_clusters
from datagen.text.minhash import MinHasher, band_keys, lsh_params, pair_jaccard, shingle, sorted_unique
from datagen.paths import InputFile
from datagen.steps.base import COLUMN, FittedVerdicts, RunStep, Scope, StageConfigBase

EXACT, NEAR, REFERENCE = "exact_duplicate", "near_duplicate", "reference_match"
PERMUTATION_SEED = 1
READERS: dict[str, Callable[[Path], pl.DataFrame]] = {".parquet": pl.read_parquet, ".jsonl": pl.read_ndjson, ".ndjson": pl.read_ndjson}


class DedupConfig(StageConfigBase):
    stage: Literal["dedup"] = "dedup"
    scope: ClassVar[Scope] = "run"
    column: str = Field(
        "completion", pattern=COLUMN,
        description="the text to compare: any text column (default: the last generated text); prompt: the last user message; both: prompt and completion together",
    )
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard similarity of token shingles at which rows are near-duplicates")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash signature size (one-permutation bins)")
    # Five-word shingles (as in datatrove and text-dedup): one changed word in a 100-word text
    # still leaves Jaccard ~0.9, while paraphrases that share phrases but not sentences stay apart.
    # In scripts written without spaces a token is one character: 5-character shingles there.
    shingle_size: int = Field(5, ge=1, le=32, description="tokens (words; characters in scripts without spaces) per shingle")
    bands: int | None = Field(None, ge=2, description="LSH bands; default: chosen for recall at the threshold")
    keep: Literal["first", "best"] = "first"
    score_column: str | None = Field(None, description="with keep: best, the row with the highest score is kept")
    reference: InputFile | None = Field(None, description="Parquet/JSONL file; rows near-duplicating any of its texts are dropped")
    reference_column: str = "prompt"

    @model_validator(mode="after")
    def _consistent(self) -> "DedupConfig":
        if self.bands is not None and self.bands > self.num_perm:
            raise ValueError(f"bands ({self.bands}) is larger than num_perm ({self.num_perm})")
        if (self.keep == "best") != (self.score_column is not None):
            raise ValueError("keep: best needs a score_column, and score_column is only used with keep: best")
        return self

    def input_files(self) -> list[Path]:
        return [Path(self.reference)] if self.reference else []

    def views(self) -> dict[str, str]:
        # prompt and both are read from the messages and the completion by the stage itself
        return {"completion": "completion"} if self.column in ("prompt", "both") else super().views()

    def build(self) -> "DedupStage":
        return DedupStage(self)


def read_table(path: Path, what: str) -> pl.DataFrame:
    """A Parquet or JSONL file chosen by extension, with at least one row."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DatagenError(f"unknown {what} file extension {path.suffix or '(none)'!r}: use .parquet or .jsonl", path)
    if not path.is_file():
        raise DatagenError(f"{what} file not found", path)
    if path.stat().st_size == 0:
        raise DatagenError(f"{what} file is empty", path)
    try:
        frame = reader(path)
    except Exception as err:  # noqa: BLE001 - polars raises several kinds for a malformed file
        raise DatagenError(f"cannot read the {what} file: {first_line(err)}", path) from err
    if frame.height == 0:
        raise DatagenError(f"{what} file has no rows", path)
    return frame


def text_column(frame: pl.DataFrame, column: str, source: str | Path, field: str) -> pl.Series:
    """The column of texts to compare: strings (dictionary-encoded ones, such as pandas'
    "category", are text too) or all nulls; any other type is refused, never converted. In a JSONL
    file, polars reads a column mixing strings with numbers or objects as JSON text: such a column
    is refused too, naming the first row that is not a string."""
    if column not in frame.columns:
        raise DatagenError(f"no column {column!r} (columns: {', '.join(frame.columns)})", source, field)
    series = frame[column]
    if series.dtype == pl.Null or isinstance(series.dtype, (pl.Categorical, pl.Enum)):
        return series.cast(pl.String)
    if series.dtype != pl.String:
        raise DatagenError(f"column {column!r} holds {series.dtype}, not text", source, field)
    if Path(source).suffix.lower() in (".jsonl", ".ndjson") and Path(source).is_file():
        _require_json_strings(Path(source), column, field)
    return series


def _require_json_strings(path: Path, column: str, field: str) -> None:
    """Refuse a JSONL column whose values are not all strings (or null), by a strict second
    reading of that column alone with pyarrow, which stops at the first value of another type."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    options = pa_json.ParseOptions(explicit_schema=pa.schema([(column, pa.string())]), unexpected_field_behavior="ignore")
    block = min(max(path.stat().st_size + 1, 1 << 20), (1 << 31) - 1)  # one block: row numbers count from the file's start
    try:
        pa_json.read_json(path, read_options=pa_json.ReadOptions(block_size=block), parse_options=options)
    except pa.ArrowInvalid as err:
        found = re.search(r"changed from string to (\w+)(?: in row (\d+))?", str(err))
        if found:
            where = f" in row {int(found.group(2)) + 1}" if found.group(2) else ""
            raise DatagenError(f"column {column!r} holds a {found.group(1)}{where} among its strings: not text, and not converted", path, field) from None


SKETCH_CHUNK = 8192  # texts sketched at a time (their arrays stay in cache), then only keys are kept
PAIR_CHUNK = 1 << 15  # candidate pairs compared at a time (their texts are re-shingled)


@dataclass
class Sketch:
    band_keys: np.ndarray  # (texts, bands) uint32
    text_keys: np.ndarray  # (texts, 2) uint64: equal for texts with the same words in the same order
    shingles: np.ndarray  # shingles per text; 0 for an empty or null text


class ShingleJaccard:
    """Exact Jaccard similarity of word shingles between texts `left[index[i]]` (index: all rows by
    default) and `right[j]` (`right`: left itself by default). Shingles are recomputed for the rows
    asked about, a chunk of pairs at a time, so nothing the size of the data is kept."""

    def __init__(self, size: int, left: pl.Series, index: np.ndarray | None = None, right: pl.Series | None = None):
        self.size, self.left, self.index = size, left, index
        self.right = left if right is None else right

    def _rows(self, i: np.ndarray) -> np.ndarray:
        return i if self.index is None else self.index[i]

    def pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        found = np.empty(len(a))
        for lo in range(0, len(a), PAIR_CHUNK):
            ca, cb = self._rows(a[lo : lo + PAIR_CHUNK]), b[lo : lo + PAIR_CHUNK]
            if self.right is self.left:
                cb = self._rows(cb)
            ua, ub = sorted_unique(ca), sorted_unique(cb)
            shingles = shingle(pl.concat([self.left.gather(ua), self.right.gather(ub)]), self.size)
            found[lo : lo + PAIR_CHUNK] = pair_jaccard(shingles, np.searchsorted(ua, ca), len(ua) + np.searchsorted(ub, cb))
        return found


class Deduplicator:
    """Verdicts for a column of texts: which rows to keep, and which kept row each dropped row duplicates."""

    def __init__(self, config: DedupConfig, reference: pl.Series | None = None):
        self.threshold = config.threshold
        self.shingle_size = config.shingle_size
        self.hasher = MinHasher(config.num_perm, PERMUTATION_SEED)
        self.bands, self.rows = lsh_params(config.threshold, config.num_perm, config.bands)
        self.reference: tuple[pl.Series, Sketch] | None = None
        if reference is not None:
            self.reference = (reference, self.sketch(reference))

    def sketch(self, texts: pl.Series) -> Sketch:
        n = len(texts)
        sketch = Sketch(np.empty((n, self.bands), np.uint32), np.empty((n, 2), np.uint64), np.empty(n, np.int64))
        for lo in range(0, n, SKETCH_CHUNK):
            shingles = shingle(texts.slice(lo, SKETCH_CHUNK), self.shingle_size, text_keys=True)
            hi = lo + len(shingles)
            sketch.band_keys[lo:hi] = band_keys(self.hasher.signatures(shingles), self.bands, self.rows)
            sketch.text_keys[lo:hi], sketch.shingles[lo:hi] = shingles.text_keys, shingles.counts()
        return sketch

    def reference_matches(self, texts: pl.Series, sketch: Sketch | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per text: the row of the closest reference text at or above the threshold (-1 if none) and its similarity."""
        rows = np.full(len(texts), -1, dtype=np.int64)
        sims = np.zeros(len(texts))
        if self.reference is None:
            return rows, sims
        reference, ref_sketch = self.reference
        sketch = sketch or self.sketch(texts)
        mine, theirs = np.flatnonzero(sketch.shingles), np.flatnonzero(ref_sketch.shingles)
        a, b = candidate_pairs(sketch.band_keys[mine], ref_sketch.band_keys[theirs])
        a, b = mine[a], theirs[b]
        found = ShingleJaccard(self.shingle_size, texts, right=reference).pairs(a, b)
        hit = found >= self.threshold
        a, b, found = best_match(a[hit], b[hit], found[hit])
        rows[a], sims[a] = b, found
        return rows, sims

    def verdicts(self, texts: pl.Series, scores: pl.Series | None = None, reference_views: list[pl.Series] | None = None) -> pl.DataFrame:
        """One row per text: keep, reason, kept_row (the row kept for its cluster; itself when kept),
        similarity (exact Jaccard to the kept row; for a kept row the highest among its duplicates),
        reference_row. Rows are taken in order, or by descending score (nulls last) when scores are
        given; a row is dropped when it duplicates a row kept before it, so every dropped row is within
        the threshold of the row it names and no two kept rows are (union-find would chain rows that
        drift further and further from the kept one)."""
        n = len(texts)
        order = np.arange(n) if scores is None else _by_score(scores)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        sketch = self.sketch(texts)

        ref_row = np.full(n, -1, dtype=np.int64)
        ref_sim = np.zeros(n)
        for view in reference_views if reference_views is not None else [texts]:
            rows, sims = self.reference_matches(view, sketch if view is texts else None)
            better = sims > ref_sim
            ref_row[better], ref_sim[better] = rows[better], sims[better]

        # Exact groups (same words in the same order) in priority order; each group's first row stands for it.
        groups = (
            pl.DataFrame({"k0": sketch.text_keys[:, 0], "k1": sketch.text_keys[:, 1], "row": np.arange(n), "rank": rank})
            .filter(texts.is_not_null() & pl.Series(ref_row < 0))
            .sort("rank")
            .with_columns(rep=pl.col("row").first().over("k0", "k1"))
        )
        row, rep = groups["row"].to_numpy(), groups["rep"].to_numpy()
        reps = row[row == rep]  # in priority order
        near = reps[sketch.shingles[reps] > 0]  # empty texts have only their exact duplicates
        kept_of, near_sims = greedy_clusters(sketch.band_keys[near], ShingleJaccard(self.shingle_size, texts, near), self.threshold)
        target = np.arange(n)
        group_sim = np.ones(n)
        target[near], group_sim[near] = near[kept_of], near_sims

        goes_to = target[rep]  # per grouped row: the row kept for it
        dropped = row != goes_to
        keep = np.ones(n, dtype=bool)
        reason = np.full(n, None, dtype=object)
        kept_row = np.arange(n, dtype=np.int64)
        similarity = np.full(n, np.nan)
        d, g = row[dropped], rep[dropped]
        keep[d], kept_row[d], similarity[d] = False, goes_to[dropped], group_sim[g]
        reason[d] = np.where(target[g] == g, EXACT, NEAR)
        np.fmax.at(similarity, goes_to[dropped], group_sim[g])
        matched = ref_row >= 0
        keep[matched] = False
        reason[matched] = REFERENCE
        similarity[matched] = ref_sim[matched]
        return pl.DataFrame(
            {
                "keep": keep,
                "reason": pl.Series(reason.tolist(), dtype=pl.String),
                "kept_row": pl.Series(kept_row).set(pl.Series(matched), None),
                "similarity": pl.Series(similarity).fill_nan(None),
                "reference_row": pl.Series(ref_row).set(pl.Series(~matched), None),
            }
        )


def _by_score(scores: pl.Series) -> np.ndarray:
    """Row indices by descending score, nulls (and NaN) last, input order among equals."""
    values = scores.cast(pl.Float64).fill_nan(None)
    frame = pl.DataFrame({"score": values}).with_row_index("row")
    return frame.sort("score", descending=True, nulls_last=True, maintain_order=True)["row"].to_numpy()


def prompt_text() -> pl.Expr:
    """The rendered prompt: the content of the last user message."""
    user = pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
    return pl.col("messages").list.eval(user).list.last()


class DedupStage(RunStep):
    def __init__(self, config: DedupConfig):
        self.config = config
        self.label = config.label
        reference = None
        if config.reference is not None:
            path = Path(config.reference)
            reference = text_column(read_table(path, "reference"), config.reference_column, path, f"{self.label}.reference_column")
        self.deduplicator = Deduplicator(config, reference)
        self._verdicts: FittedVerdicts | None = None

    def _inputs(self, frame: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        if c.score_column is not None and c.score_column not in frame.columns:
            raise DatagenError(f"score column {c.score_column!r} is not among the candidate columns (does an earlier stage add it?)", None, f"{self.label}.score_column")
        views = {"completion": pl.col("completion"), "prompt": prompt_text()}
        views["both"] = pl.concat_str([views["prompt"], views["completion"]], separator="\n", ignore_nulls=True)
        # With both, each part is also checked against the reference on its own; otherwise the text is the only view.
        parts = ["completion", "prompt"] if c.column == "both" else []
        columns = [pl.col("candidate_id"), views.get(c.column, views["completion"]).alias("text"), *(views[v].alias(f"view_{v}") for v in parts)]
        if c.score_column is not None:
            columns.append(pl.col(c.score_column).alias("score"))
        return frame.select(columns)

    def _decide(self, rows: pl.DataFrame) -> pl.DataFrame:
        if rows["candidate_id"].n_unique() != rows.height:
            raise RuntimeError("dedup needs unique candidate_id values")
        views = [rows[c] for c in rows.columns if c.startswith("view_")] or None  # None: the text itself
        scores = rows["score"] if "score" in rows.columns else None
        v = self.deduplicator.verdicts(rows["text"], scores, views)
        ids = rows["candidate_id"]
        columns = {
            f"{self.label}_keep": v["keep"],
            f"{self.label}_reason": v["reason"],
            f"{self.label}_cluster": ids.gather(v["kept_row"]),
            f"{self.label}_similarity": v["similarity"],
        }
        if self.config.reference is not None:
            columns[f"{self.label}_reference_row"] = v["reference_row"]
        return pl.DataFrame({"candidate_id": ids, **columns})

    def fit(self, shards: Callable[[], Iterator[pl.DataFrame]]) -> None:
        frames = [self._inputs(frame) for frame in shards()]
        if frames:  # chunks are kept as they are: no second copy of every row's text
            self._verdicts = FittedVerdicts(self._decide(pl.concat(frames, how="vertical_relaxed", rechunk=False)))

    def __call__(self, batch: pl.DataFrame) -> pl.DataFrame:
        if self._verdicts is None:  # without fit (a single batch used on its own), the batch is the whole data set
            return batch.hstack(self._decide(self._inputs(batch)).drop("candidate_id"))
        return batch.hstack(self._verdicts.require(batch, self.label))

    def summarize(self, outputs: pl.LazyFrame) -> dict:
        k = self.label
        seen = outputs.filter(pl.col(f"{k}_keep").is_not_null())
        reasons = dict(seen.group_by(f"{k}_reason").len().collect().rows())
        sizes = seen.filter(pl.col(f"{k}_cluster").is_not_null()).group_by(f"{k}_cluster").len().collect()["len"]
        return {
            "exact_duplicates": int(reasons.get(EXACT, 0)),
            "near_duplicates": int(reasons.get(NEAR, 0)),
            "reference_matches": int(reasons.get(REFERENCE, 0)),
            "duplicate_clusters": int((sizes > 1).sum()),
            "largest_cluster": int(sizes.max() or 0),
            "lsh_bands": self.deduplicator.bands,
            "lsh_rows": self.deduplicator.rows,
        }

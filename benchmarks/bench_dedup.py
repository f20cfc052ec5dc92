"""Benchmark 2: MinHash near-duplicate detection, datagen vs the plain datasketch loop and peers.

    .venv/bin/python benchmarks/bench_dedup.py [--docs 100000] [--threshold 0.8]

All methods get the same documents (benchmarks/corpus.py: real sentences, planted
near-duplicates) and 5-word shingles at the same threshold:
- datagen: `Deduplicator` (the dedup stage and `datagen dedup`): one-permutation MinHash with
  optimal densification, LSH bands chosen for recall, keep-first decided in vectorized rounds,
  every candidate confirmed by exact Jaccard.
- datasketch loop: the textbook per-document loop, `MinHash.update` per shingle, then
  `MinHashLSH(threshold)` query-then-insert.
- datasketch bulk: the same with `MinHash.bulk` computing all signatures in one call.
- datatrove: Hugging Face datatrove's MinHash pipeline (signature, buckets, cluster steps, in
  process, default 14 x 8 buckets), if it is importable; see README.md for its throw-away venv.

Speed is documents per CPU-second of this process (all threads), i.e. docs/s per core, so it
holds on a shared machine. Quality is against exact Jaccard over all pairs (benchmarks/jaccard.py):
- pair precision: of the pairs a method reports (a dropped document and the one it names as
  its duplicate), the fraction whose exact Jaccard is >= threshold;
- recall: of the documents exact-Jaccard dedup drops (keep-first: a document goes when it is
  within the threshold of an earlier kept one), the fraction the method drops too;
- doc precision: of the documents the method drops, the fraction exact dedup drops too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

import corpus
import jaccard
from measure import machine, timed

SHINGLE = 5
NUM_PERM = 128


def words_of(text: str) -> list[str]:
    return re.sub(r"[^\w\s]|_", " ", text.lower()).split()


def shingles_of(text: str) -> list[bytes]:
    words = words_of(text)
    if len(words) < SHINGLE:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)]


def run_datagen(texts: list[str], threshold: float) -> np.ndarray:
    from datagen.steps.dedup import DedupConfig, Deduplicator

    config = DedupConfig(threshold=threshold, num_perm=NUM_PERM, shingle_size=SHINGLE)
    verdicts = Deduplicator(config).verdicts(pl.Series(texts))
    return np.where(verdicts["keep"].to_numpy(), -1, verdicts["kept_row"].fill_null(-1).to_numpy())


def _lsh_loop(signatures, threshold: float) -> np.ndarray:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    dup_of = np.full(len(signatures), -1)
    for i, m in enumerate(signatures):
        found = lsh.query(m)
        if found:
            dup_of[i] = min(found)
        else:
            lsh.insert(i, m, check_duplication=False)
    return dup_of


def run_datasketch_loop(texts: list[str], threshold: float) -> np.ndarray:
    from datasketch import MinHash

    signatures = []
    for text in texts:
        m = MinHash(num_perm=NUM_PERM, seed=1)
        for s in shingles_of(text):
            m.update(s)
        signatures.append(m)
    return _lsh_loop(signatures, threshold)


def run_datasketch_bulk(texts: list[str], threshold: float) -> np.ndarray:
    from datasketch import MinHash

    return _lsh_loop(MinHash.bulk([shingles_of(t) for t in texts], num_perm=NUM_PERM, seed=1), threshold)


def datatrove_available() -> str | None:
    try:
        import datatrove  # noqa: F401
        from datatrove.pipeline.dedup.minhash import MinhashDedupSignature  # noqa: F401
    except ImportError as err:
        return f"datatrove is not importable here ({err}); see benchmarks/README.md for its venv"
    return None


def run_datatrove(texts: list[str], threshold: float) -> np.ndarray:
    os.environ["TQDM_DISABLE"] = "1"  # its cluster step draws a progress bar
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupSignature
    from loguru import logger

    logger.remove()  # datatrove logs every step at INFO
    work = Path(tempfile.mkdtemp(prefix="datatrove-bench-"))
    try:
        # datatrove's defaults: English (spaCy's tokenizer), 5-grams, 14 buckets x 8 hashes, 64-bit.
        config = MinhashConfig(n_grams=SHINGLE)
        docs = (Document(text=t, id=str(i)) for i, t in enumerate(texts))
        MinhashDedupSignature(output_folder=str(work / "sigs"), config=config).run(docs, rank=0, world_size=1)
        for bucket in range(config.num_buckets):
            MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config).run(
                rank=bucket, world_size=config.num_buckets
            )
        MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "clusters"), config=config, save_cluster_id=True).run()
        removed = set(_read_uints(work / "clusters" / "000000.remove"))
        members = np.array(_read_uints(work / "clusters" / "000000.clusters"), dtype=np.int64).reshape(-1, 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dup_of = np.full(len(texts), -1)
    kept_of_cluster = {int(c): int(d) for d, c in members if int(d) not in removed}
    for doc, cluster in members:
        if int(doc) in removed:
            dup_of[doc] = kept_of_cluster[int(cluster)]
    return dup_of


def _read_uints(path: Path) -> list[int]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return list(struct.unpack(f"<{len(data) // 4}I", data))


def exact_drops(n: int, truth: pl.DataFrame) -> np.ndarray:
    """Keep-first dedup on the exact pair graph: a document goes when an earlier kept one is within the threshold."""
    earlier: dict[int, list[int]] = {}
    for a, b in truth.select("a", "b").iter_rows():
        earlier.setdefault(b, []).append(a)
    dropped = np.zeros(n, dtype=bool)
    for b in sorted(earlier):
        dropped[b] = any(not dropped[a] for a in earlier[b])
    return dropped


def quality(dup_of: np.ndarray, table: pl.DataFrame, truth_drops: np.ndarray, threshold: float) -> dict[str, float]:
    dropped = dup_of >= 0
    rows = np.flatnonzero(dropped)
    pairs = pl.DataFrame({"a": np.minimum(rows, dup_of[rows]), "b": np.maximum(rows, dup_of[rows])})
    similar = jaccard.jaccard_of(table, pairs)["jaccard"].to_numpy() >= threshold - 1e-12 if len(rows) else np.array([])
    both = int((dropped & truth_drops).sum())
    return {
        "pair_precision": float(similar.mean()) if len(rows) else float("nan"),
        "recall": both / max(int(truth_drops.sum()), 1),
        "doc_precision": both / max(int(dropped.sum()), 1),
        "dropped": int(dropped.sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", action="append", default=[], choices=["loop", "bulk", "datatrove"], help="leave a baseline out")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    made = timed(lambda: corpus.documents(args.docs, args.seed))
    texts = made.value
    words = sum(len(t.split()) for t in texts)
    print(f"corpus: {len(texts)} documents, {words / len(texts):.0f} words each on average ({made.wall:.1f} s to build)")
    truth_run = timed(lambda: (lambda table: (table, jaccard.similar_pairs(table, args.threshold)))(jaccard.shingle_table(texts, SHINGLE)))
    table, truth = truth_run.value
    truth_drops = exact_drops(len(texts), truth)
    print(f"exact Jaccard >= {args.threshold}: {truth.height} pairs, {int(truth_drops.sum())} documents to drop ({truth_run.wall:.1f} s)")

    methods = {"datagen": run_datagen, "datasketch loop": run_datasketch_loop, "datasketch bulk": run_datasketch_bulk, "datatrove": run_datatrove}
    skipped = {"datasketch loop": "loop" in args.skip, "datasketch bulk": "bulk" in args.skip, "datatrove": "datatrove" in args.skip}
    results = {}
    for name, method in methods.items():
        if skipped.get(name):
            continue
        if name == "datatrove" and (why := datatrove_available()):
            print(f"skipping datatrove: {why}")
            continue
        run = timed(lambda: method(texts, args.threshold))
        results[name] = (run, quality(run.value, table, truth_drops, args.threshold))
        print(f"  {name}: {run.cpu:.1f} CPU s, {run.wall:.1f} s wall", flush=True)

    base = results["datagen"][0].cpu
    print()
    print(f"| method | docs/s per core | datagen is x faster | pair precision | recall | doc precision | dropped |")
    print(f"|---|---:|---:|---:|---:|---:|---:|")
    for name, (run, q) in results.items():
        print(
            f"| {name} | {len(texts) / run.cpu:,.0f} | {run.cpu / base:.1f} | {q['pair_precision']:.4f} | {q['recall']:.4f} | "
            f"{q['doc_precision']:.4f} | {q['dropped']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

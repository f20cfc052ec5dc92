"""Benchmark 4: peak memory of a large dedup run streamed through the local executor.

    .venv/bin/python benchmarks/bench_memory.py [--rows 1000000] [--n 32]

A recipe of rows/n prompts x n samples goes through `run_pipeline` with the stages `finished`
and `dedup`: generation, both filters, the writer and the report, exactly as `datagen run`
does. The backend is a data source, not a model: each completion is a function of its prompt and
sample seed (benchmarks/corpus.py: 2-6 real sentences, a fifth near-duplicates of shared texts),
so a million rows cost no GPU. A thread samples the process's RSS every 50 ms; the dedup stage's
`fit` is timed to split the run into phases. For scale, the size of one full copy of the final
stage's rows in memory (polars `estimated_size`) is printed too.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import polars as pl
import yaml

import corpus
from measure import machine, peak_rss_mib, rss_mib


class CorpusBackend:
    """The Backend protocol over benchmarks/corpus.py: n texts per request, chosen by its seed."""

    model_name = "corpus"

    def generate(self, requests, sampling):
        from datagen.llm import Completion, Generation

        out = []
        for request in requests:
            texts = [corpus.completion(f"{request.seed}:{i}") for i in range(sampling.n)]
            out.append(Generation([Completion(t, "stop", len(t.split())) for t in texts], 10))
        return out

    def close(self) -> None:
        pass


class RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            self.samples.append((time.perf_counter(), rss_mib()))
            time.sleep(self.interval)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> float:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside) if inside else float("nan")


def template(prompts: int) -> dict:
    # Enough distinct slot combinations for any prompt count up to 200,000.
    side = max(2, int(prompts ** (1 / 3)) + 2)
    return {
        "id": "bench",
        "user": "Write about {{ a }} and {{ b }} for {{ c }}.",
        "slots": {"a": [f"topic {i}" for i in range(side)], "b": [f"angle {i}" for i in range(side)], "c": [f"reader {i}" for i in range(side)]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=32, help="samples per prompt")
    parser.add_argument("--shard-size", type=int, default=64, help="prompts per shard")
    parser.add_argument("--keep", type=Path, help="keep the run directory here instead of a temporary one")
    args = parser.parse_args()

    import datagen.steps.dedup as dedup
    from datagen.run.executor import run_pipeline
    from datagen.recipe import load_recipe

    print(f"machine: {machine()}")
    corpus.sentences()  # built once before measuring
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    prompts = args.rows // args.n
    (work / "templates").mkdir()
    (work / "templates" / "bench.yaml").write_text(yaml.safe_dump(template(prompts)))
    recipe = {
        "name": "bench-memory",
        "template_dirs": ["templates"],
        "templates": [{"name": "bench", "count": prompts}],
        "backend": {"kind": "scripted", "sampling": {"n": args.n, "max_tokens": 4096}},
        "stages": [{"stage": "finished"}, {"stage": "dedup"}],
        "execution": {"shard_size": args.shard_size},
    }
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = args.keep or work / "out"

    fit_window: list[float] = []
    real_fit = dedup.DedupStage.fit

    def fit(self, shards):  # instrumentation only: the real fit, timed
        fit_window.append(time.perf_counter())
        try:
            return real_fit(self, shards)
        finally:
            fit_window.append(time.perf_counter())

    dedup.DedupStage.fit = fit
    sampler = RssSampler()
    before = rss_mib()
    sampler.start()
    start = time.perf_counter()
    try:
        result = run_pipeline(load_recipe(work / "recipe.yaml"), out, progress="log", backend_factory=CorpusBackend)
        end = time.perf_counter()
        sampler.running = False
        sampler.join()
        stats = {s["stage"]: s for s in result.stage_stats}
        final = pl.scan_parquet(str(out / "run" / "stages" / "02_dedup" / "*.parquet"))
        rows = final.select(pl.len()).collect().item()
        text_mib = final.select(pl.col("completion").str.len_bytes().sum()).collect().item() / 2**20
        copy_mib = final.collect().estimated_size("mb")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    fit_start, fit_end = fit_window
    print()
    print(f"{rows:,} rows ({prompts:,} prompts x n={args.n}), {text_mib:,.0f} MiB of completion text; "
          f"dedup dropped {sum(stats['dedup']['dropped'].values()):,}; {result.rows_written:,} rows written; {end - start:.0f} s")
    print(f"one full copy of the final stage's rows in memory: {copy_mib:,.0f} MiB")
    print()
    print("| phase | seconds | peak RSS MiB |")
    print("|---|---:|---:|")
    print(f"| before the run | | {before:,.0f} |")
    print(f"| generate + finished (streamed shard by shard) | {fit_start - start:.0f} | {sampler.peak(start, fit_start):,.0f} |")
    print(f"| dedup fit (all alive rows at once) | {fit_end - fit_start:.0f} | {sampler.peak(fit_start, fit_end):,.0f} |")
    print(f"| dedup shards, writer, report | {end - fit_end:.0f} | {sampler.peak(fit_end, end):,.0f} |")
    print(f"| whole run (kernel peak, VmHWM) | {end - start:.0f} | {peak_rss_mib():,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark 3: collapse detection on many texts: time in embedding vs similarity search, and memory.

    .venv/bin/python benchmarks/bench_collapse.py [--texts 50000] [--block-size 2048]

Rows look like a generate stage's output: prompts of 4 samples each, 3 templates, 7 personas, and
completions from benchmarks/corpus.py (2-6 real sentences by default; a fifth are edited copies of
shared texts, so there are near-identical outputs across prompts to find). The collapse stage's `fit`
runs as the executor calls it; its embedding call and its similarity search (tiled pairs +
connected components) are timed and their peak memory taken from the kernel's counter. The
search holds one block x block tile of cosines at a time, never the n x n matrix.
"""

from __future__ import annotations

import argparse
import sys

import polars as pl

import corpus
from measure import machine, peak_rss_mib, reset_peak_rss, rss_mib, timed


def rows(n: int, sentences: tuple[int, int], samples: int = 4) -> pl.DataFrame:
    prompts = [f"p{i // samples:06d}" for i in range(n)]
    return pl.DataFrame(
        {
            "candidate_id": [f"{p}-{i % samples}" for i, p in enumerate(prompts)],
            "prompt_id": prompts,
            "sample_index": [i % samples for i in range(n)],
            "template_id": [f"template_{(i // samples) % 3}" for i in range(n)],
            "persona": [f"persona_{(i // samples) % 7}" for i in range(n)],
            "completion": [corpus.completion(f"collapse:{i}", bases=max(1, n // 40), sentences_per_text=sentences) for i in range(n)],
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=50_000)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sentences", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"),
                        help="sentences per text (default 2 6, about 55 words); embedding time grows with length, the search does not")
    args = parser.parse_args()

    import datagen.steps.collapse as collapse
    from datagen.steps.collapse import CollapseConfig

    print(f"machine: {machine()}")
    frame = rows(args.texts, tuple(args.sentences))
    words = frame["completion"].str.split(" ").list.len().mean()
    stage = CollapseConfig(max_collapse_rate=None, block_size=args.block_size, batch_size=args.batch_size).build()
    stage.encoder  # noqa: B018 - load the model before measuring, so the phases below exclude it
    baseline = rss_mib()
    phases: dict[str, tuple[float, float, float, float]] = {}

    def measured(name, fn):
        def wrapper(*a, **kw):
            at_start = rss_mib()
            reset_peak_rss()
            run = timed(lambda: fn(*a, **kw))
            phases[name] = (run.cpu, run.wall, peak_rss_mib(), at_start)
            return run.value
        return wrapper

    # Instrument the two calls fit makes, in the collapse module's namespace.
    collapse.encode = measured("embedding", collapse.encode)
    collapse.connected_labels = measured("similarity search", collapse.connected_labels)
    reset_peak_rss()
    fit = timed(lambda: stage.fit(lambda: iter([frame])))
    whole_peak = peak_rss_mib()
    summary = stage._summary

    n = frame.height
    print(f"{n} texts, {words:.0f} words on average; RSS with the model loaded: {baseline:.0f} MiB")
    print(f"found: {summary['cross_set_clusters']} cross-set clusters ({summary['rows_in_clusters']} rows), "
          f"{summary['sibling_duplicates']} sibling duplicates, {summary['rows_with_repeated_prefix']} repeated prefixes")
    print()
    print("| phase | CPU s | wall s | texts/s (wall) | peak RSS MiB | peak - RSS at its start MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    other_cpu = fit.cpu - sum(p[0] for p in phases.values())
    other_wall = fit.wall - sum(p[1] for p in phases.values())
    for name, (cpu, wall, peak, at_start) in phases.items():
        print(f"| {name} | {cpu:.1f} | {wall:.1f} | {n / wall:,.0f} | {peak:,.0f} | {peak - at_start:,.0f} |")
    print(f"| rest of fit (siblings, prefixes, distinct-n, per-group stats) | {other_cpu:.1f} | {other_wall:.1f} | | | |")
    print(f"| whole fit | {fit.cpu:.1f} | {fit.wall:.1f} | {n / fit.wall:,.0f} | {whole_peak:,.0f} | {whole_peak - baseline:,.0f} |")
    dims = 384
    print()
    print(f"embeddings: {n} x {dims} float32 = {n * dims * 4 / 2**20:.0f} MiB; one similarity tile: "
          f"{args.block_size}^2 float32 = {args.block_size**2 * 4 / 2**20:.0f} MiB; "
          f"a full n x n float32 matrix would be {n * n * 4 / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

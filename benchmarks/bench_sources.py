"""Benchmark 6: a 1M-row Parquet data source through prompt expansion.

    .venv/bin/python benchmarks/bench_sources.py [--rows 1000000]

Writes a Parquet file of `rows` invented support questions (id, prompt of 60-200 characters, and a
`body` column of ~400 characters that prompt expansion must not read), then, each in a fresh child
process so that peak memory (the kernel's VmHWM) is the expansion's own:

1. bring-your-own prompts: `templates: [{from: prompts, system: ...}]` over every row, through
   `expand_prompts` exactly as `datagen run` calls it (open and check the source, stream record
   batches, build the prompt frame, draw a temperature per prompt);
2. a template slot drawn from the same source: `ticket: {from: prompts}` with count 20,000 (rows
   fetched by position, rendered in the bounded child).

Printed per case: rows/s (wall), CPU seconds, RSS after imports, peak RSS, and for scale the size
of the prompt frame (polars estimated_size) and of the file's rows as Python dicts (measured on
50,000 rows, scaled up).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import machine, peak_rss_mib, rss_mib

WORDS = ("api key token refresh webhook retry export page limit sandbox invoice customer order "
         "latency timeout region bucket upload signature header cursor batch quota scope").split()


def write_source(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` rows in row groups of 100,000, written batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("body", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            prompts = [f"Why does my {' '.join(rng.choices(WORDS, k=rng.randint(8, 30)))} fail?" for _ in range(n)]
            bodies = [" ".join(rng.choices(WORDS, k=60)) for _ in range(n)]
            writer.write_table(pa.table({"id": [f"Q-{start + i:07d}" for i in range(n)], "prompt": prompts, "body": bodies}, schema=schema))


def recipe(root: Path, source: Path, case: str) -> Path:
    (root / "templates").mkdir(exist_ok=True)
    (root / "templates" / "ask.yaml").write_text(json.dumps({
        "id": "ask", "user": "Rewrite this support question more clearly: {{ ticket.prompt }}", "slots": {"ticket": {"from": "prompts"}},
    }))
    uses = [{"from": "prompts", "system": "You answer API support questions.", "sampling": {"temperature": [0.3, 0.7, 1.0]}}] if case == "byo" else [{"name": "ask", "count": 20_000}]
    data = {"name": "bench", "seed": 1, "template_dirs": ["templates"], "data": {"prompts": {"path": str(source)}}, "templates": uses, "backend": {"kind": "scripted"}}
    path = root / f"{case}.yaml"
    path.write_text(json.dumps(data))
    return path


def measure(recipe_path: str) -> None:
    """In the child: expand the recipe's prompts; print one JSON line of figures."""
    import polars as pl

    from datagen.recipe import load_recipe
    from datagen.run.executor import expand_prompts

    before = rss_mib()
    cpu, wall = time.process_time(), time.perf_counter()
    prompts = expand_prompts(load_recipe(recipe_path))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert prompts["prompt_id"].n_unique() == prompts.height
    figures = {"prompts": prompts.height, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "rows_per_s": round(prompts.height / wall),
               "rss_after_imports_mib": round(before), "peak_rss_mib": round(peak_rss_mib()),
               "prompt_frame_mib": round(prompts.estimated_size() / 2**20)}
    del prompts
    print(json.dumps(figures))
    _ = pl


def python_objects_mib(source: Path, rows: int) -> float:
    """The file's rows as Python dicts, measured on 50,000 rows and scaled to `rows`."""
    import polars as pl

    code = (
        "import polars as pl, sys; sys.path.insert(0, 'benchmarks'); from measure import rss_mib; "
        f"t = pl.read_parquet({str(source)!r}, n_rows=50_000); b = rss_mib(); d = t.to_dicts(); print(rss_mib() - b)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    _ = pl
    return float(out) * rows / 50_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "questions.parquet"
        start = time.perf_counter()
        write_source(source, args.rows)
        print(f"source: {args.rows:,} rows, {source.stat().st_size / 2**20:.0f} MiB Parquet (written in {time.perf_counter() - start:.0f} s)")
        print(f"the same rows as Python dicts: ~{python_objects_mib(source, args.rows):,.0f} MiB (50,000 rows measured, scaled)")
        for case in ("byo", "slot"):
            out = subprocess.run([sys.executable, __file__, "--measure", str(recipe(root, source, case))], capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            print(case, out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

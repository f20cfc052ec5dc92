"""Benchmark 1: generation overhead, datagen's pipeline vs raw vLLM `LLM.chat` on the same prompts.

    .venv/bin/python benchmarks/bench_generate.py [--prompts 128] [--n 1] [--max-tokens 48]
    .venv/bin/python benchmarks/bench_generate.py --model Qwen/Qwen2.5-7B-Instruct --prompts 2000 --max-tokens 512   # GPU

Both sides use one and the same `vllm.LLM`, built by datagen's vLLM backend (so the engine
settings are identical by construction: on CPU eager mode, bfloat16, no chunked prefill), and the
same prompts (the shipped assistant_requests template), sampling parameters and per-request seeds,
so they generate the same tokens. `min_tokens = max_tokens` fixes the work per request.
- raw: one `LLM.chat` call with every prompt, as a hand-written script would do it.
- datagen: `run_pipeline` on a recipe with no filter stages: template expansion, shards of
  `shard_size` prompts (one `LLM.chat` each), candidate rows, Parquet shards and manifest, the
  dataset writer and everything else a run does.
A warm-up raw pass comes first (prefix cache and allocator are warm for everyone), then the two
alternate (raw, datagen, datagen, raw, ...). Reported, as medians over the repeats:
- datagen's wall time over raw's (the target: within 5%);
- datagen's own time: its wall time minus the time spent inside `LLM.chat`, over raw's wall time.
  On a machine shared with other jobs, where one run's wall time swings by 2x, this is the
  steady figure: it is the Python/polars/Parquet work datagen adds around the engine;
- the engine time of datagen's sharded calls over raw's single call (what sharding costs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from measure import machine

REPO = Path(__file__).resolve().parent.parent


def _preload_openmp() -> None:
    """vLLM's CPU build needs Intel OpenMP preloaded (see ../shared/CPU_VLLM.md); re-exec once with it."""
    lib = Path(sys.prefix) / "lib" / "libiomp5.so"
    if lib.exists() and str(lib) not in os.environ.get("LD_PRELOAD", ""):
        env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [str(lib), os.environ.get("LD_PRELOAD")])))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


class SharedEngine:
    """datagen's backend around the benchmark's one engine; closed once, at the end. Counts the
    seconds spent in the engine's generate calls."""

    def __init__(self, backend):
        self.backend = backend
        self.model_name = backend.model_name
        self.engine_seconds = 0.0

    def generate(self, requests, sampling):
        start = time.perf_counter()
        try:
            return self.backend.generate(requests, sampling)
        finally:
            self.engine_seconds += time.perf_counter() - start

    def close(self) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=1, help="completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=64, help="prompts per shard (the recipe default is 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side")
    parser.add_argument("--engine", default="{}", help="JSON: extra vllm.LLM arguments, e.g. '{\"tensor_parallel_size\": 2}'")
    args = parser.parse_args()
    _preload_openmp()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vllm import SamplingParams

    from datagen.llm.vllm_backend import VLLMBackend, engine_kwargs, is_cpu_build
    from datagen.run.executor import expand_prompts, run_pipeline
    from datagen.llm.generate import request_seed
    from datagen.recipe import load_recipe

    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        recipe = {
            "name": "bench-generate",
            "seed": 1,
            "template_dirs": [str(REPO / "templates")],
            "templates": [{"name": "assistant_requests", "count": args.prompts}],
            "backend": {
                "kind": "vllm",
                "model": args.model,
                "engine": json.loads(args.engine),
                "sampling": {"n": args.n, "temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens, "min_tokens": args.max_tokens},
            },
            "stages": [],
            "execution": {"shard_size": args.shard_size},
        }
        path = work / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        loaded = load_recipe(path)
        config, seed = loaded.recipe.backend, loaded.recipe.sampling_seed
        print(f"engine settings (both sides): {engine_kwargs(config, is_cpu_build(), seed)}")
        backend = VLLMBackend(config, seed)
        llm = backend.llm

        prompts = expand_prompts(loaded)
        messages = prompts["messages"].to_list()
        sampling = config.sampling
        params = [
            SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                           min_tokens=sampling.min_tokens, seed=request_seed(seed, pid))
            for pid in prompts["prompt_id"]
        ]

        def raw() -> int:
            outputs = llm.chat(messages, sampling_params=params, use_tqdm=False)
            return sum(len(c.token_ids) for out in outputs for c in out.outputs)

        engine_time: list[float] = []

        def pipeline(i: int) -> int:
            out = work / f"out-{i}"
            shared = SharedEngine(backend)
            run_pipeline(loaded, out, progress=False, backend_factory=lambda: shared)
            engine_time.append(shared.engine_seconds)
            manifest = json.loads((out / "run" / "manifest.json").read_text())
            return sum(s["tokens"] for s in manifest["stages"]["generate"]["shards"].values())

        start = time.perf_counter()
        warm_tokens = raw()
        print(f"warm-up: {len(messages)} prompts x n={sampling.n}, {warm_tokens} tokens in {time.perf_counter() - start:.1f} s")
        times: dict[str, list[float]] = {"raw": [], "datagen": []}
        cpu: dict[str, list[float]] = {"raw": [], "datagen": []}
        tokens: dict[str, set[int]] = {"raw": set(), "datagen": set()}
        for r in range(args.repeats):
            order = ["raw", "datagen"] if r % 2 == 0 else ["datagen", "raw"]
            for side in order:
                start, cpu_start = time.perf_counter(), time.process_time()
                count = raw() if side == "raw" else pipeline(r)
                times[side].append(time.perf_counter() - start)
                cpu[side].append(time.process_time() - cpu_start)
                tokens[side].add(count)
                inside = f", {engine_time[-1]:7.2f} s in LLM.chat" if side == "datagen" else ""
                print(f"  {side:>7}: {times[side][-1]:7.2f} s wall, {cpu[side][-1]:7.2f} CPU s, {count / times[side][-1]:8.1f} tok/s{inside}", flush=True)
        backend.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {side: (statistics.median(times[side]), statistics.median(cpu[side])) for side in times}
    print()
    print("| side | median wall s | median CPU s | tokens per run | tok/s (wall) |")
    print("|---|---:|---:|---:|---:|")
    for side, name in (("raw", "raw vLLM LLM.chat"), ("datagen", "datagen run_pipeline")):
        count = next(iter(tokens[side]))
        print(f"| {name} | {median[side][0]:.2f} | {median[side][1]:.2f} | {count} | {count / median[side][0]:.1f} |")
    same = tokens["raw"] == tokens["datagen"] and len(tokens["raw"]) == 1
    raw_wall = median["raw"][0]
    wall = median["datagen"][0] / raw_wall
    own = statistics.median(t - e for t, e in zip(times["datagen"], engine_time)) / raw_wall
    sharding = statistics.median(engine_time) / raw_wall
    print(f"\nsame tokens every run: {same}")
    print(f"datagen / raw wall time: {wall:.3f} ({100 * (wall - 1):+.1f}%)")
    print(f"datagen's own time outside LLM.chat / raw wall time: {100 * own:.2f}%")
    print(f"LLM.chat time in datagen's {-(-len(messages) // args.shard_size)} shard call(s) / raw's single call: {sharding:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

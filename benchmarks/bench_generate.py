"""Benchmark 1: generation throughput, datagen's whole run vs one raw vLLM `LLM.chat` over all prompts.

    .venv/bin/python benchmarks/bench_generate.py                     # CPU default: 512 prompts, n=4, max_tokens 128, shards 16/64/256
    .venv/bin/python benchmarks/bench_generate.py --model Qwen/Qwen2.5-7B-Instruct --prompts 4000 --max-tokens 512   # GPU

Both sides use one and the same `vllm.LLM`, built by datagen's vLLM backend (identical engine
settings by construction: on CPU eager mode, bfloat16, no chunked prefill), the same prompts (the
shipped assistant_requests template), sampling parameters and per-request seeds. Completions end
where the model ends them (no min_tokens): natural lengths vary by 10x, which is what makes an
engine drain at the end of every blocking shard call.
- raw: one `LLM.chat` call with every prompt, as a hand-written script would do it.
- datagen: `run_pipeline` on a recipe with no filter stages, at each --shard-sizes value: template
  expansion, the engine fed shard after shard (datagen.llm.base.stream), candidate rows, a
  Parquet shard and manifest written as each shard finishes, the dataset writer and everything
  else a run does.
A short warm-up pass comes first; then the sides alternate in a rotating order (raw first, then
each shard size, then raw again, ...), so that load from other jobs on a shared machine falls on
every side. Reported per run: wall and CPU seconds, tokens, tok/s and the load average; then, per
datagen shard size, its median wall time over the median raw wall time, and its tok/s over raw's
(the fair figure when the two sides' natural lengths differ by a few tokens: batching changes
bfloat16 numerics, so a sampled token can differ), and the engine steps each side took (forward
passes: for the same tokens, more steps mean emptier batches; the load does not move this one).
--blocking adds the path datagen had before, one blocking `LLM.chat` per shard, for reference.
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
    """datagen's backend around the benchmark's one engine (generate and stream), closed once, at the end."""

    def __init__(self, backend):
        self.backend = backend
        self.model_name = backend.model_name

    def generate(self, requests, sampling):
        return self.backend.generate(requests, sampling)

    def stream(self, batches):
        return self.backend.stream(batches)

    def close(self) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--n", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--shard-sizes", default="16,64,256", help="datagen shard sizes to measure (the recipe default is 64)")
    parser.add_argument("--blocking", action="store_true", help="also time the old path: one blocking LLM.chat per shard")
    parser.add_argument("--repeats", type=int, default=1, help="rounds (each: raw once, datagen once per shard size)")
    parser.add_argument("--engine", default="{}", help="JSON: extra vllm.LLM arguments, e.g. '{\"tensor_parallel_size\": 2}'")
    args = parser.parse_args()
    _preload_openmp()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vllm import SamplingParams

    from datagen.llm.vllm_backend import VLLMBackend, engine_kwargs, is_cpu_build
    from datagen.run.executor import expand_prompts, run_pipeline
    from datagen.llm.generate import request_seed
    from datagen.recipe import load_recipe

    sizes = [int(x) for x in args.shard_sizes.split(",")]
    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    runs: list[dict] = []
    try:
        def recipe_at(size: int):
            recipe = {
                "name": "bench-generate",
                "seed": 1,
                "template_dirs": [str(REPO / "templates")],
                "templates": [{"name": "assistant_requests", "count": args.prompts}],
                "backend": {
                    "kind": "vllm",
                    "model": args.model,
                    "engine": json.loads(args.engine),
                    "sampling": {"n": args.n, "temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens},
                },
                "stages": [],
                "execution": {"shard_size": size},
            }
            path = work / f"recipe-{size}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            return load_recipe(path)

        loaded = {size: recipe_at(size) for size in sizes}
        first = loaded[sizes[0]]
        config, seed = first.recipe.backend, first.recipe.sampling_seed
        print(f"engine settings (both sides): {engine_kwargs(config, is_cpu_build(), seed)}")
        backend = VLLMBackend(config, seed)
        llm = backend.llm

        prompts = expand_prompts(first)
        messages = prompts["messages"].to_list()
        sampling = config.sampling
        params = [
            SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                           seed=request_seed(seed, pid))
            for pid in prompts["prompt_id"]
        ]

        # Engine steps (one forward pass each) per run: a figure the machine's load does not move.
        # Fewer steps for the same tokens = fuller batches; a drained engine takes extra steps.
        steps = [0]
        engine_step = llm.llm_engine.step

        def counted_step():
            steps[0] += 1
            return engine_step()

        llm.llm_engine.step = counted_step

        def blocking(size: int) -> int:
            """The old path, for reference: one blocking LLM.chat per shard of `size` prompts."""
            total = 0
            for i in range(0, len(messages), size):
                outputs = llm.chat(messages[i:i + size], sampling_params=params[i:i + size], use_tqdm=False)
                total += sum(len(c.token_ids) for out in outputs for c in out.outputs)
            return total

        def raw(count: int | None = None) -> int:
            outputs = llm.chat(messages[:count], sampling_params=params[:count], use_tqdm=False)
            return sum(len(c.token_ids) for out in outputs for c in out.outputs)

        def pipeline(size: int, i: int) -> int:
            out = work / f"out-{size}-{i}"
            shared = SharedEngine(backend)
            run_pipeline(loaded[size], out, progress=False, backend_factory=lambda: shared)
            manifest = json.loads((out / "run" / "manifest.json").read_text())
            shutil.rmtree(out, ignore_errors=True)
            return sum(s["tokens"] for s in manifest["stages"]["generate"]["shards"].values())

        start = time.perf_counter()
        warm_tokens = raw(32)
        print(f"warm-up: 32 prompts x n={sampling.n}, {warm_tokens} tokens in {time.perf_counter() - start:.1f} s; "
              f"timed: {len(messages)} prompts x n={sampling.n}, max_tokens {sampling.max_tokens}")
        sides = ["raw"] + [f"datagen@{size}" for size in sizes] + [f"blocking@{size}" for size in sizes if args.blocking]
        for r in range(args.repeats):
            order = sides[r % len(sides):] + sides[: r % len(sides)]
            if r == args.repeats - 1:
                order.append(order[0])  # end where the round began: the first side is measured at both ends of the load
            for side in order:
                load = os.getloadavg()[0]
                start, cpu_start = time.perf_counter(), time.process_time()
                steps[0] = 0
                kind, _, size = side.partition("@")
                count = raw() if side == "raw" else pipeline(int(size), r) if kind == "datagen" else blocking(int(size))
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                runs.append({"side": side, "wall": wall, "cpu": cpu, "tokens": count, "load": load, "steps": steps[0]})
                print(f"  {side:>12}: {wall:7.1f} s wall, {cpu:7.1f} CPU s, {count:7d} tokens, {count / wall:7.1f} tok/s, "
                      f"{steps[0]} engine steps, load {load:.1f}", flush=True)
        backend.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(side: str, key: str) -> float:
        return statistics.median(run[key] for run in runs if run["side"] == side)

    def rate(side: str) -> float:
        return statistics.median(run["tokens"] / run["wall"] for run in runs if run["side"] == side)

    print()
    print("| side | runs | median wall s | median CPU s | median tokens | tok/s | engine steps | wall / raw | tok/s / raw | steps / raw |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for side in sides:
        count = sum(run["side"] == side for run in runs)
        wall = median(side, "wall") / median("raw", "wall")
        speed = rate(side) / rate("raw")
        print(f"| {side} | {count} | {median(side, 'wall'):.1f} | {median(side, 'cpu'):.1f} | {median(side, 'tokens'):.0f} | "
              f"{rate(side):.1f} | {median(side, 'steps'):.0f} | {wall:.3f} | {speed:.3f} | {median(side, 'steps') / median('raw', 'steps'):.3f} |")
    loads = [run["load"] for run in runs]
    print(f"\nload average (1 min) at the runs' starts: {min(loads):.1f} to {max(loads):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

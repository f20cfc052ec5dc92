"""Benchmark 1b: a two-step recipe (generate + judge with the same model): engine loads and wall time.

    .venv/bin/python benchmarks/bench_engines.py [--prompts 32] [--n 1] [--max-tokens 32] [--judge-max-tokens 96]
    .venv/bin/python benchmarks/bench_engines.py --model Qwen/Qwen2.5-7B-Instruct --prompts 1000 --n 4 --max-tokens 512   # GPU

datagen: `run_pipeline` on generate -> judge (the shipped helpfulness rubric), both naming the same
model; the run's EnginePool starts engines through a counter, so the figure is the engines the run
really started (target: 1). raw: a hand-written script's equivalent with one engine: load it once,
one `LLM.chat` over the generation requests, one over the judge requests (the very requests the
datagen run sent, recorded, so both sides do the same work). vllm is imported before either side
is timed. Reported: loads, datagen's wall time (its one load included), and raw's load + the two calls.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench_generate import REPO, _preload_openmp
from measure import machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--judge-max-tokens", type=int, default=96)
    args = parser.parse_args()
    _preload_openmp()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import vllm  # noqa: F401 - imported before either side is timed: neither pays for it

    from datagen.llm import make_backend
    from datagen.llm.vllm_backend import VLLMBackend, sampling_params
    from datagen.recipe import load_recipe
    from datagen.run.engines import EnginePool
    from datagen.run.executor import run_pipeline

    print(f"machine: {machine()}")
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    calls: list[tuple[str, list, object]] = []  # (step, requests, sampling) as the engine got them

    class Recording:
        def __init__(self, backend):
            self.backend, self.model_name = backend, backend.model_name

        def generate(self, requests, sampling):
            calls.append(("judge", list(requests), sampling))
            return self.backend.generate(requests, sampling)

        def stream(self, batches):
            def recorded():
                for key, requests, sampling in batches:
                    calls.append(("generate", list(requests), sampling))
                    yield key, requests, sampling
            return self.backend.stream(recorded())

        def close(self):
            self.backend.close()

    loads = []

    def start(config):
        loads.append(config.model)
        return Recording(make_backend(config, 0))

    try:
        recipe = {
            "name": "bench-engines", "seed": 1, "template_dirs": [str(REPO / "templates")],
            "templates": [{"name": "assistant_requests", "count": args.prompts}],
            "backend": {"kind": "vllm", "model": args.model,
                        "sampling": {"n": args.n, "temperature": 0.8, "max_tokens": args.max_tokens}},
            "stages": [{"stage": "judge", "rubric": "helpfulness", "min_score": 1,
                        "backend": {"kind": "vllm", "model": args.model, "sampling": {"max_tokens": args.judge_max_tokens}}}],
        }  # fmt: skip
        path = work / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        load = os.getloadavg()[0]
        start_time = time.perf_counter()
        run_pipeline(load_recipe(path), work / "out", progress=False, engines=EnginePool(start=start))
        datagen_wall = time.perf_counter() - start_time
        print(f"datagen: {datagen_wall:.1f} s wall, engine loads: {len(loads)} ({', '.join(loads)}), load {load:.1f}", flush=True)

        load = os.getloadavg()[0]
        start_time = time.perf_counter()
        engine = VLLMBackend(load_recipe(path).recipe.backend, 0)
        raw_load = time.perf_counter() - start_time
        walls = {}
        for step in ("generate", "judge"):
            requests = [(r, s) for name, rs, s in calls if name == step for r in rs]
            start_time = time.perf_counter()
            engine.llm.chat([r.messages for r, _ in requests], sampling_params=[sampling_params(s, r) for r, s in requests], use_tqdm=False)
            walls[step] = time.perf_counter() - start_time
            print(f"raw {step}: {len(requests)} requests in one LLM.chat, {walls[step]:.1f} s", flush=True)
        engine.close()
        raw = raw_load + sum(walls.values())
        print(f"raw: load {raw_load:.1f} s + generate {walls['generate']:.1f} s + judge {walls['judge']:.1f} s = {raw:.1f} s, load {load:.1f}")
        print(f"\n| engine loads (datagen) | datagen wall s | raw load + 2 calls s | datagen / raw |\n|---:|---:|---:|---:|\n"
              f"| {len(loads)} | {datagen_wall:.1f} | {raw:.1f} | {datagen_wall / raw:.3f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

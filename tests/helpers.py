"""What the tests share: paths, the tiny template and base recipe, candidate rows built from the
real row schema (datagen.llm.generate.CANDIDATE_SCHEMA), a scripted model that records its calls, a
backend factory that counts what it starts, canned completions to one question, the installed CLI
and TRL's trainers. Tests import from here; tests/conftest.py holds only fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import yaml

from datagen.llm import ChatRequest, Generation
from datagen.llm.scripted import ScriptedBackend
from datagen.llm.generate import CANDIDATE_SCHEMA
from datagen.rows import SamplingConfig

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
PIPELINES = REPO / "pipelines"

# --- a project on disk ---------------------------------------------------------------------------

TINY_TEMPLATE = {
    "id": "tiny",
    "description": "test template",
    "system": "You are {{ persona }}.",
    "user": "Tell me about {{ topic }} at a {{ difficulty }} level.",
    "slots": {
        "persona": ["a pirate", "a poet", "a teacher"],
        "difficulty": ["easy", "hard"],
        "topic": ["rivers", "volcanoes", "bridges", "stars"],
    },
}
# The smallest recipe over TINY_TEMPLATE: scripted backend, one filter, shards of 4 prompts.
BASE_RECIPE = {
    "name": "test",
    "seed": 7,
    "templates": [{"name": "tiny", "count": 6}],
    "backend": {"kind": "scripted", "sampling": {"n": 2, "max_tokens": 50}},
    "stages": [{"stage": "finished"}],
    "execution": {"shard_size": 4},
}


def write_yaml(path: Path, data: Any) -> Path:
    """Write `data` as YAML at `path` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def datagen_cli(*args: Any, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed console entry point, as a user runs it (stdout/stderr captured as text)."""
    exe = Path(sys.executable).with_name("datagen")
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)


def datagen_in_process(*args: Any, cwd: Path | None = None, engines: Any = None) -> subprocess.CompletedProcess:
    """`datagen ARGS` run by `datagen.cli.main` in this process, from `cwd` (default: the
    repository): the same code as the console script without 1-2 CPU-seconds of interpreter and
    import start per call. Returns what `datagen_cli` returns (exit status, argparse's SystemExit
    included; stdout and stderr as text) plus `seconds` (wall time). For checks of the CLI's exit
    status and message; keep a few true console-script runs (datagen_cli) per behaviour. Sets
    DATAGEN_NO_REEXEC so that a vllm recipe never re-executes the test process. `engines`: an
    EnginePool kept open across calls (datagen.cli.main's `engines`)."""
    import contextlib
    import io
    import time

    from datagen.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    reexec = os.environ.get("DATAGEN_NO_REEXEC")
    os.environ["DATAGEN_NO_REEXEC"] = "1"
    os.chdir(cwd or REPO)
    start = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args], engines=engines)
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1 if exit.code else 0
    finally:
        os.chdir(previous)
        if reexec is None:
            os.environ.pop("DATAGEN_NO_REEXEC", None)
    result = subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
    result.seconds = time.monotonic() - start
    return result


def start_local_ray() -> None:
    """`ray.init` of a local Ray with 2 CPUs whose processes may use every core of the machine,
    not only this xdist worker's share (tests/conftest.py pins workers): Ray's dozen processes
    start on one core 2x slower, and they mostly wait on each other rather than compute."""
    import ray

    with every_core():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")


@contextmanager
def every_core() -> Iterator[None]:
    """Processes started inside may run on every core the test run was given (an xdist worker's
    controller keeps them all, a `taskset` included); this process's own share is restored after."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    share = os.sched_getaffinity(0)
    given = os.sched_getaffinity(os.getppid()) if os.environ.get("PYTEST_XDIST_WORKER") else share
    os.sched_setaffinity(0, given)
    try:
        yield
    finally:
        os.sched_setaffinity(0, share)


class ModelCLI:
    """`datagen ARGS` for real-model tests, run by one spawned process that keeps its engines open
    between calls (datagen.cli.main with an EnginePool): a CLI run of the embedded model spends
    20-26 s starting Python, torch, vLLM and the engine, so a test session pays that once, not per
    run. The process starts with Intel OpenMP preloaded, as the `datagen` command re-executes
    itself to run vLLM's CPU build (datagen.cli.openmp_preload), and holds vLLM away from
    the test process (its thread binding, 2-3 GB). Call it as `datagen_cli` is called; it returns
    the same CompletedProcess. Keep true `datagen_cli` runs where the process itself is under test
    (a kill, the console, the quickstart a user runs)."""

    def __init__(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from datagen.cli import openmp_preload

        preload = openmp_preload(os.environ)
        saved = {name: os.environ.get(name) for name in preload}
        os.environ.update(preload)
        self.executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_open_engines)
        try:  # the environment is read when the process starts: at the first call
            self.executor.submit(os.getpid).result(timeout=120)
        except BaseException:
            self._stop()
            raise
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def __call__(self, *args: Any, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
        """Raises TimeoutError after `timeout` seconds, having stopped the process (its run with it):
        later calls fail rather than queue behind a run that never ends."""
        future = self.executor.submit(_run_with_engines, [str(a) for a in args], str(cwd) if cwd else None)
        try:
            code, out, err = future.result(timeout=timeout)
        except TimeoutError:
            self._stop()
            raise
        return subprocess.CompletedProcess(list(args), code, out, err)

    def close(self) -> None:
        """Closes the engines, then the process (stopped if it does not answer in 120 s)."""
        try:
            self.executor.submit(_close_engines).result(timeout=120)
        finally:
            self._stop()

    def _stop(self) -> None:
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()


_ENGINES = None  # the EnginePool of a ModelCLI process (set there by its initializer)


def _open_engines() -> None:
    global _ENGINES
    # vLLM's loggers write to the sys.stdout they find at import: imported here, before any call
    # redirects sys.stdout, they keep the process's own (whose descriptor each run routes to its
    # engine.log).
    import vllm  # noqa: F401
    from datagen.run.engines import EnginePool

    _ENGINES = EnginePool()


def _run_with_engines(args: list[str], cwd: str | None) -> tuple[int, str, str]:
    result = datagen_in_process(*args, cwd=Path(cwd) if cwd else None, engines=_ENGINES)
    return result.returncode, result.stdout, result.stderr


def _close_engines() -> None:
    _ENGINES.close()

# --- one question and canned answers to it -------------------------------------------------------

QUESTION = [
    {"role": "system", "content": "You are a patient tutor."},
    {"role": "user", "content": "How many minutes are in 3.5 hours?"},
]
ANSWER = "210"  # 3.5 x 60
RIGHT = "One hour has 60 minutes, so 3.5 hours is 3.5 x 60 = 210 minutes. The answer is \\boxed{210}."
RIGHT_TOO = "Multiply the hours by 60: 3.5 times 60 gives 210, so 3.5 hours hold \\boxed{210} minutes."
WRONG = "3.5 hours is 3 hours and 50 minutes, so it makes 3 x 60 + 50 = \\boxed{230} minutes in all."
WRONG_TOO = "An hour has 100 minutes, so 3.5 hours is 3.5 x 100 = 350 minutes. The answer is \\boxed{350}."
NO_ANSWER = "Clocks and calendars help people plan their days and keep their appointments on time."

# --- candidate rows from the real schema ---------------------------------------------------------

# What the executor adds to every candidate row: alive or not, and the stage that dropped it.
ROW_SCHEMA = CANDIDATE_SCHEMA | {"keep": pl.Boolean, "dropped_by": pl.String}


def candidate_row(prompt_id: str = "p", sample_index: int = 0, completion: str | None = RIGHT, **fields: Any) -> dict:
    """One candidate as generate writes it and the executor carries it (every ROW_SCHEMA column),
    alive, for QUESTION; `fields` override any column or add stage columns (`verify_keep`, ...)."""
    row = {name: None for name in ROW_SCHEMA} | {
        "prompt_id": prompt_id,
        "template_id": "math",
        "messages": QUESTION,
        "slots": "{}",
        "persona": "a patient tutor",
        "difficulty": "easy",
        "seed": 7,
        "candidate_id": f"{prompt_id}-{sample_index}",
        "sample_index": sample_index,
        "sample_seed": 1,
        "completion": completion,
        "finish_reason": "stop",
        "prompt_tokens": 12,
        "completion_tokens": None if completion is None else len(completion.split()),
        "model": "scripted",
        "backend": "scripted",
        "sampling": "{}",
        "generate_keep": True,
        "keep": True,
    }
    row |= fields
    if "candidate_id" not in fields:
        row["candidate_id"] = f"{row['prompt_id']}-{row['sample_index']}"
    return row


def candidate_frame(rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Candidate rows as one frame: ROW_SCHEMA's types for its columns, other (stage) columns inferred
    over all rows. A row given as a partial mapping is completed by candidate_row; a row without a
    sample_index gets its position among the rows of its prompt."""
    seen: dict[str, int] = {}
    full = []
    for row in rows:
        row = dict(row)
        prompt_id = row.setdefault("prompt_id", "p")
        row.setdefault("sample_index", seen.get(prompt_id, 0))
        seen[prompt_id] = row["sample_index"] + 1
        full.append(candidate_row(**row))
    if not full:
        return pl.DataFrame(schema=ROW_SCHEMA)
    return pl.DataFrame(full, schema_overrides=ROW_SCHEMA, infer_schema_length=None)


def samples_frame(samples: Mapping[str, list[str]], **fields: Any) -> pl.DataFrame:
    """`{prompt_id: [completion, ...]}` as candidates, prompt by prompt, sample_index in order;
    `fields` (a reference, a template_id, ...) are set on every row."""
    return candidate_frame(
        {"prompt_id": pid, "sample_index": i, "completion": text} | fields for pid, texts in samples.items() for i, text in enumerate(texts)
    )


# --- scripted models that record what they were asked -------------------------------------------


class Call(NamedTuple):
    requests: list[ChatRequest]
    sampling: SamplingConfig


class ScriptedModel(ScriptedBackend):
    """The scripted backend, recording every generate call; `reply(request, index) -> text` answers
    by reading the request (the way a model reading it would) instead of picking a canned response."""

    def __init__(self, responses: Iterable[str] = (), reply: Callable[[ChatRequest, int], str] | None = None):
        super().__init__(list(responses))
        self.reply = reply
        self.calls: list[Call] = []
        self.closed = False

    @property
    def requests(self) -> int:
        """Requests asked so far, over all calls."""
        return sum(len(call.requests) for call in self.calls)

    def _text(self, request: ChatRequest, index: int) -> str:
        return self.reply(request, index) if self.reply is not None else super()._text(request, index)

    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig) -> list[Generation]:
        self.calls.append(Call(list(requests), sampling))
        return super().generate(requests, sampling)

    def close(self) -> None:
        self.closed = True


class CountingFactory:
    """A `backend_factory` that records every backend it starts (`started`)."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make
        self.started: list[Any] = []

    def __call__(self):
        backend = self.make()
        self.started.append(backend)
        return backend

    @property
    def requests(self) -> int:
        """Requests asked of all the backends started, for those that count them (ScriptedModel)."""
        return sum(backend.requests for backend in self.started)


# --- TRL's trainers on the embedded model (imported lazily: torch is slow to load) ---------------

# Room for the shipped templates' prompts (under 250 tokens) plus part of each answer: TRL cuts the
# answers (keep_start) but drops no row. Training cost on CPU grows with it (~1 TFLOP a step at 700).
TRL_MAX_LENGTH = 320


def load_embedded_model():
    """The embedded SmolLM2-135M as a float32 transformers model and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.llm.embedded import embedded_model_dir

    path = embedded_model_dir()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def trainer_args(config_class, out: Path):
    """Two optimizer steps on CPU, batch 1, nothing saved or reported."""
    return config_class(
        output_dir=str(out), per_device_train_batch_size=1, gradient_accumulation_steps=1, max_steps=2, logging_steps=1,
        learning_rate=1e-5, use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no",
        max_length=TRL_MAX_LENGTH, seed=0, dataloader_num_workers=0,
    )


def assert_two_steps(trainer) -> None:
    """Train on one torch thread and check that both steps ran and logged a finite loss. One
    thread: ~20 s on an idle 2-core machine (11 s on two), but ~30 s instead of ~130 s when the
    cores are shared with other jobs (OpenMP threads wait on each other)."""
    import math

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(before)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 2 and len(losses) == 2
    assert all(math.isfinite(loss) for loss in losses), losses


def train_dpo(ds, out: Path):
    """TRL's DPOTrainer on `ds` as it is, two steps; fails if TRL drops a row it cannot use."""
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_embedded_model()
    trainer = DPOTrainer(model=model, args=trainer_args(DPOConfig, out), train_dataset=ds, processing_class=tokenizer)
    assert len(trainer.train_dataset) == ds.num_rows, "TRL dropped rows it could not use"
    assert_two_steps(trainer)
    return trainer


def assert_real_code_failures(failures: Iterable[Mapping[str, Any]]) -> None:
    """A planted code-failure set is what it claims: every row's `expected` passes its `tests` and
    its `output`'s program (signals.code_of) fails them, both run by the python_tests verifier."""
    from datagen.counterexamples.signals import code_of
    from datagen.steps.verify import PythonTestsVerifier

    checker = PythonTestsVerifier()
    for row in failures:
        assert checker.check({"completion": row["expected"], "tests": row["tests"]}).keep, row["id"]
        verdict = checker.check({"completion": code_of(row["output"]), "tests": row["tests"]})
        assert not verdict.keep and verdict.reason == "tests_failed", row["id"]

"""Fixtures only; what tests share otherwise lives in tests/helpers.py."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The dev and CI machines set PYTHONDONTWRITEBYTECODE=1, and pytest then rewrites every test
# module's asserts anew in each process: about 2.5 s of every xdist worker's collection. Its cache
# goes to tests/__pycache__ (ignored by git).
sys.dont_write_bytecode = False

from helpers import BASE_RECIPE, TINY_TEMPLATE, ModelCLI, write_yaml  # noqa: E402


@pytest.fixture
def project(tmp_path: Path):
    """A scratch project: templates/tiny.yaml and a helper that writes recipes next to it."""
    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)

    def recipe(**fields) -> Path:
        data = copy.deepcopy(BASE_RECIPE) | fields
        return write_yaml(tmp_path / "pipelines" / "recipe.yaml", data)

    recipe.root = tmp_path
    return recipe


def pytest_configure(config):
    """Under pytest-xdist, each worker keeps to its own share of the cores (round-robin), and what
    it starts (the embedded model's engine, CLI runs, a vLLM server) inherits that. vLLM's CPU
    engine spins OpenMP threads on every core it may use, so two real-model runs sharing two cores
    each took 2.4-2.6x as long as alone; on one core each, one run takes 1.37x as long as on two
    (the multi_turn recipe: 71 s vs 52 s), so two workers finish the model tests in about 0.7x the
    serial time. Serial runs keep every core."""
    if not hasattr(config, "workerinput"):  # the controller (or a serial run) records test times
        config.pluginmanager.register(_TestSeconds(), "datagen-test-seconds")
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    share = cores[int(worker.removeprefix("gw")) % count::count]
    if share and len(cores) >= count:
        os.sched_setaffinity(0, share)


@pytest.fixture(scope="session")
def model_cli():
    """`datagen ARGS` in one process per test session that keeps the embedded model's engine open
    between runs (helpers.ModelCLI); started by the first test that asks for it."""
    runner = ModelCLI()
    yield runner
    runner.close()


# Rough seconds per test on the 2-core machine, by marker: used to order the files until a run has
# measured them (pytest's cache, .pytest_cache, ignored by git).
_COST = {"model": 30.0, "slow": 6.0}
_FAST_COST = 0.15
_MEASURED = "datagen/test_seconds"  # cache key: test id -> seconds (setup + call + teardown), last run


def pytest_collection_modifyitems(config, items):
    """Longest files first, so that `-n 2 --dist loadfile --no-loadscope-reorder` (the README's
    command) hands the real-model files out at the start and the two workers finish together
    (longest-processing-time-first scheduling), instead of one worker running a long file alone at
    the end. A test's cost is its time in the last run that measured it, else a rough cost by
    marker; a file's cost is the sum over its selected tests. The order within a file is kept, and
    tests are independent of their order, so a serial run is unchanged."""
    cache = getattr(config, "cache", None)  # none under -p no:cacheprovider
    measured = cache.get(_MEASURED, {}) if cache is not None else {}

    def cost(item) -> float:
        if item.nodeid in measured:
            return measured[item.nodeid]
        return max((_COST[m.name] for m in item.iter_markers() if m.name in _COST), default=_FAST_COST)

    def file_of(item) -> str:
        return item.nodeid.split("::")[0]

    per_file: dict[str, float] = {}
    for item in items:
        path = file_of(item)
        per_file[path] = per_file.get(path, 0.0) + cost(item)
    rank = {path: i for i, path in enumerate(sorted(per_file, key=lambda p: (-per_file[p], p)))}
    items.sort(key=lambda item: rank[file_of(item)])


class _TestSeconds:
    """Each test's time (setup + call + teardown; on the xdist controller, from its workers'
    reports), written to pytest's cache when the run ends, for the next run's file order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session):
        cache = getattr(session.config, "cache", None)
        if cache is None or not self.seconds:
            return
        measured = cache.get(_MEASURED, {})
        measured.update({nodeid: round(seconds, 3) for nodeid, seconds in self.seconds.items()})
        cache.set(_MEASURED, measured)

"""Fixtures only; what tests share otherwise lives in tests/helpers.py."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import BASE_RECIPE, PIPELINES, REPO, TEMPLATES, TINY_TEMPLATE, datagen_cli, write_yaml  # noqa: E402

# Re-exported for test files that still import them from conftest; new code imports from helpers.
__all__ = ["BASE_RECIPE", "PIPELINES", "REPO", "TEMPLATES", "TINY_TEMPLATE", "datagen_cli", "write_yaml"]


@pytest.fixture
def project(tmp_path: Path):
    """A scratch project: templates/tiny.yaml and a helper that writes recipes next to it."""
    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)

    def recipe(**fields) -> Path:
        data = copy.deepcopy(BASE_RECIPE) | fields
        return write_yaml(tmp_path / "pipelines" / "recipe.yaml", data)

    recipe.root = tmp_path
    return recipe


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's `--dist loadgroup` (set in pyproject's addopts): every test that
    runs the real model is in one group, so two vLLM engines (each takes every core and 2-4 GB)
    never run at once; every other test stays with its module, so a module-scoped fixture (a whole
    run shared by the module's tests) is built once, not once per worker. Runs before xdist reads
    the groups; without xdist the marks do nothing."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            group = "model" if item.get_closest_marker("model") else item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))

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


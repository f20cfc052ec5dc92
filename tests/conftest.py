from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
PIPELINES = REPO / "pipelines"

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


def write_yaml(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path: Path):
    """A scratch project: templates/tiny.yaml and a helper that writes recipes next to it."""
    write_yaml(tmp_path / "templates" / "tiny.yaml", TINY_TEMPLATE)

    def recipe(**fields) -> Path:
        data = copy.deepcopy(BASE_RECIPE) | fields
        return write_yaml(tmp_path / "pipelines" / "recipe.yaml", data)

    recipe.root = tmp_path
    return recipe


def datagen_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed console entry point, as a user runs it."""
    exe = Path(sys.executable).with_name("datagen")
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)

"""The shipped recipes, templates, rubrics and constitutions work from a normal (non-editable) install:
a wheel built from the sources, installed into a fresh virtual environment that borrows only the
third-party dependencies from the project's environment (a .pth naming its site-packages, whose own
.pth files, the editable datagen among them, are not read), used from a folder outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import datagen

pytestmark = pytest.mark.slow  # a wheel build, a venv and CLI subprocesses

SOURCE = Path(datagen.__file__).resolve().parent
REPO = SOURCE.parent
RESOURCES = SOURCE / "resources"


def _run(args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv datagen command, wheel path, a working folder outside the repository)."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy, so that the build's own files (build/, *.egg-info) stay out of the repository.
    src = root / "src"
    shutil.copytree(SOURCE, src / "datagen", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist", src], root)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [wheel] = (root / "dist").glob("datagen-*.whl")

    venv = root / "venv"
    made = _run([sys._base_executable, "-m", "venv", "--without-pip", venv], root)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    work = root / "elsewhere"
    work.mkdir()
    return python, venv / "bin" / "datagen", wheel, work


def test_the_wheel_holds_every_shipped_file(installed):
    _, _, wheel, _ = installed
    shipped = {p.relative_to(REPO).as_posix() for p in RESOURCES.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert {"datagen/resources/pipelines/quickstart.yaml", "datagen/resources/filters/rubrics/helpfulness.yaml"} <= shipped
    names = set(zipfile.ZipFile(wheel).namelist())
    assert shipped <= names, sorted(shipped - names)[:5]


def test_the_installed_package_is_the_wheel_and_not_the_checkout(installed):
    python, _, _, work = installed
    where = _run([python, "-c", "import datagen, yaml; print(datagen.__file__)"], work)
    assert where.returncode == 0, where.stderr
    path = Path(where.stdout.strip())
    assert "site-packages" in path.parts and REPO not in path.parents


def test_a_shipped_recipe_validates_by_name_and_by_path_outside_the_repository(installed):
    python, command, _, work = installed
    by_name = _run([command, "validate", "quickstart"], work)
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.startswith("ok: quickstart: 3 template(s)")
    located = _run([python, "-c", "from datagen.sources.shipped import PIPELINES; print(PIPELINES)"], work).stdout.strip()
    assert REPO not in Path(located).parents
    by_path = _run([command, "validate", Path(located) / "self_instruct_math.yaml"], work)
    assert by_path.returncode == 0, by_path.stderr
    preview = _run([command, "preview", "rejection_sft", "-n", "2"], work)
    assert preview.returncode == 0 and "math_word_problems" in preview.stdout, preview.stderr
    missing = _run([command, "validate", "no_such_recipe"], work)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "no shipped recipe of that name" in missing.stderr and "quickstart" in missing.stderr


def test_datagen_recipes_lists_every_shipped_recipe(installed):
    _, command, _, work = installed
    listed = _run([command, "recipes"], work)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()[:-1]]
    assert names == sorted(p.stem for p in (RESOURCES / "pipelines").glob("*.yaml"))
    assert listed.stdout.splitlines()[-1].startswith(f"({len(names)} recipes in ")


def test_a_rubric_and_a_constitution_load_by_name_from_the_install(installed):
    python, _, _, work = installed
    code = (
        "from datagen.sources.rubrics import load_rubric, shipped_rubrics\n"
        "from datagen.sources.constitutions import load_constitution, shipped_constitutions\n"
        "r = load_rubric('helpfulness'); c = load_constitution('hhh')\n"
        "print(r.id, len(r.criteria), c.id, len(c.principles), sorted(shipped_rubrics()), sorted(shipped_constitutions()))\n"
    )
    done = _run([python, "-c", code], work)
    assert done.returncode == 0, done.stderr
    rid, criteria, cid, principles, *_ = done.stdout.split(maxsplit=4)
    assert (rid, cid) == ("helpfulness", "hhh") and int(criteria) >= 1 and int(principles) >= 1
    for kind, folder in (("rubrics", "rubrics"), ("constitutions", "constitutions")):
        for name in (p.stem for p in (RESOURCES / "filters" / folder).glob("*.yaml")):
            assert repr(name) in done.stdout, f"{kind}: {name} not shipped in the install"

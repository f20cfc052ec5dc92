"""datagen never deletes or overwrites what it did not write: --force, replaced runs, concurrent
runs into one --out, and dedup's --out."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from datagen.errors import DatagenError
from datagen.run.run_dir import RunDir, remove_own_files
from helpers import datagen_in_process


def cli(*args) -> tuple[int, str]:
    from datagen.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def user_files(out: Path) -> dict[str, bytes]:
    """The user's own files planted in OUT (see plant)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "mine" in p.name}


def plant(out: Path) -> dict[str, bytes]:
    files = {"thesis-mine.tex": b"\\chapter{One}", "sub/data-mine.csv": b"a,b\n1,2\n", "run/notes-mine.txt": b"my notes",
             "run/stages/01_finished/keep-mine.txt": b"x"}
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return files


def test_force_on_a_folder_that_is_no_run_is_refused_and_touches_nothing(project):
    out = project.root / "out"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("chapter 1")
    (out / "sub" / "data.csv").write_text("a,b")
    code, err = cli("run", project(), "--out", out, "--force", "--no-progress")
    assert code == 2 and err.strip() == f"datagen: error: {out}: output directory is not empty and holds no datagen run; --force only replaces a datagen run; choose another --out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["sub", "sub/data.csv", "thesis.tex"]


def test_force_replaces_a_run_and_keeps_the_users_files(project):
    out = project.root / "out"
    assert cli("run", project(), "--out", out, "--no-progress")[0] == 0
    planted = plant(out)
    code, err = cli("run", project(seed=99), "--out", out, "--force", "--no-progress")
    assert code == 0, err
    assert user_files(out) == planted
    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["complete"] and pl.read_parquet(out / "data" / "*.parquet")["seed"].unique().to_list() == [99]


def test_an_unfinished_run_of_another_recipe_is_replaced_without_the_users_files(project):
    """A run that finished no shard (here: its server was never up) is replaced by the next recipe
    without --force; the user's file next to it stays."""
    import socket

    out = project.root / "out"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broken = project(backend={"kind": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 0})
    assert cli("run", broken, "--out", out, "--no-progress")[0] == 2
    (out / "thesis-mine.tex").write_text("mine")
    code, err = cli("run", project(), "--out", out, "--no-progress")
    assert code == 0, err
    assert (out / "thesis-mine.tex").read_text() == "mine"


def test_remove_own_files_removes_exactly_datagens_files(project):
    out = project.root / "out"
    assert cli("run", project(), "--out", out, "--no-progress")[0] == 0
    planted = plant(out)
    (out / "README-mine.md").write_text("mine")
    removed = remove_own_files(out)
    assert {p.relative_to(out).as_posix() for p in removed} >= {"README.md", "run/manifest.json", "run/prompts.parquet", "data"}
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != ".lock")
    assert left == sorted([*planted, "README-mine.md"])


@pytest.mark.parametrize("name,content", [("README.md", "# my own notes\n"), ("data/mine.csv", "a,b\n"), ("pairs/README.md", "notes")])
def test_a_user_file_where_the_dataset_goes_is_refused_before_anything_is_written(project, name, content):
    out = project.root / "out"
    assert cli("run", project(), "--out", out, "--no-progress")[0] == 0
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(content)
    code, err = cli("run", project(seed=5), "--out", out, "--force", "--no-progress")
    assert code == 2 and err.strip() == (
        f"datagen: error: {out / name}: holds a file datagen did not write where it writes the dataset; "
        "move it away (datagen replaces data/, pairs/ and README.md)"
    )
    assert (out / name).read_text() == content
    assert json.loads((out / "run" / "manifest.json").read_text())["complete"], "the finished run is as it was"


def test_a_second_run_into_the_same_out_is_refused_while_the_first_holds_the_lock(project):
    out = project.root / "out"
    first = RunDir(out)
    first.prepare("fingerprint-of-the-first", force=False)
    try:
        code, err = cli("run", project(), "--out", out, "--no-progress")
        assert code == 2 and err.strip() == f"datagen: error: {out}: another datagen run is writing to this directory; wait for it to finish or choose another --out"
        with pytest.raises(DatagenError, match="another datagen run"):
            RunDir(out).prepare("fingerprint-of-the-first", force=True)
    finally:
        first.release()
    code, err = cli("run", project(), "--out", out, "--no-progress", "--force")
    assert code == 0, err


SLOW_RUN = """
import sys, time
from pathlib import Path
from datagen.llm.scripted import ScriptedBackend
from datagen.run.executor import run_pipeline
from datagen.recipe import load_recipe

class Waiting(ScriptedBackend):  # generates once the file sys.argv[3] exists: the second run happens meanwhile

    def generate(self, requests, sampling):
        deadline = time.monotonic() + 120
        while not Path(sys.argv[3]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return super().generate(requests, sampling)

loaded = load_recipe(sys.argv[1])
run_pipeline(loaded, Path(sys.argv[2]), progress=False, backend_factory=lambda: Waiting([]))
print("done")
"""


def test_two_processes_running_into_one_out_at_once(project, tmp_path):
    """Another process holds the run: a second run exits 2 with one line, and the first finishes untouched."""
    recipe, out = project(), project.root / "out"
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN)
    go = tmp_path / "go"
    first = subprocess.Popen([sys.executable, str(script), str(recipe), str(out), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "run" / "prompts.parquet").exists():  # written once the lock is held
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() is not None else "slow start"
            time.sleep(0.05)
        second = datagen_in_process("run", recipe, "--out", out, "--no-progress", cwd=tmp_path)  # this process is the second
        assert second.returncode == 2 and second.stderr.strip().splitlines() == [
            f"datagen: error: {out}: another datagen run is writing to this directory; wait for it to finish or choose another --out"
        ]
        go.write_text("")
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0 and stdout.strip() == "done", stderr
    assert json.loads((out / "run" / "manifest.json").read_text())["complete"]


def write_table(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


@pytest.mark.parametrize("how", ["same path", "other spelling", "symlink", "hard link"])
def test_dedup_never_writes_over_its_input(tmp_path, how):
    source = tmp_path / "in.jsonl"
    write_table(source, ["the cat sat on the mat today", "the cat sat on the mat today", "something else entirely here"])
    before = source.read_bytes()
    (tmp_path / "d").mkdir()
    out = {"same path": source, "other spelling": tmp_path / "d" / ".." / "in.jsonl", "symlink": tmp_path / "link.jsonl",
           "hard link": tmp_path / "hard.jsonl"}[how]
    if how == "symlink":
        out.symlink_to(source)
    if how == "hard link":
        os.link(source, out)
    code, err = cli("dedup", source, "--column", "text", "--out", out)
    assert code == 2 and err.strip() == f"datagen: error: {out}: --out: is the input file ({source}); write the deduplicated table to another file"
    assert source.read_bytes() == before


def test_dedup_out_that_is_a_directory_or_the_reference(tmp_path):
    source, reference = tmp_path / "in.jsonl", tmp_path / "ref.jsonl"
    write_table(source, ["one two three four five six"])
    write_table(reference, ["seven eight nine ten eleven twelve"])
    (tmp_path / "folder").mkdir()
    code, err = cli("dedup", source, "--column", "text", "--out", tmp_path / "folder")
    assert code == 2 and err.strip() == f"datagen: error: {tmp_path / 'folder'}: --out: is a directory; name the output file (.parquet or .jsonl)"
    code, err = cli("dedup", source, "--column", "text", "--reference", reference, "--out", reference)
    assert code == 2 and "--out: is the reference file" in err
    assert reference.read_text().count("seven") == 1
    code, err = cli("dedup", source, "--column", "text", "--out", tmp_path / "new.jsonl")
    assert code == 0 and pl.read_ndjson(tmp_path / "new.jsonl")["text"].to_list() == ["one two three four five six"]


if sys.platform != "linux":
    pytestmark = pytest.mark.skip("flock and /proc are Linux's")

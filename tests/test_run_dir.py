from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from datagen.run.executor import run_pipeline
from datagen.recipe import load_recipe
from datagen.run.run_dir import atomic_write_bytes, atomic_write_parquet


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_give_the_mode_open_gives(tmp_path):
    # 0002 and 0027 both differ from the 0600 of a mkstemp file, in opposite directions for the group.
    for mask in (0o002, 0o027):
        with umask(mask):
            atomic_write_bytes(tmp_path / f"{mask}.json", b"{}")
            atomic_write_parquet(tmp_path / f"{mask}.parquet", pl.DataFrame({"a": [1]}))
            with open(tmp_path / f"{mask}.plain", "wb"):
                pass
        expected = mode(tmp_path / f"{mask}.plain")
        assert expected == 0o666 & ~mask
        assert mode(tmp_path / f"{mask}.json") == expected and mode(tmp_path / f"{mask}.parquet") == expected
    assert (tmp_path / "2.json").read_bytes() == b"{}" and pl.read_parquet(tmp_path / "2.parquet")["a"].to_list() == [1]
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_every_file_of_a_run_is_readable_as_the_umask_allows(project):
    out = project.root / "out"
    with umask(0o022):
        run_pipeline(load_recipe(project()), out, progress=False)
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"README.md", "run/manifest.json", "run/prompts.parquet", "run/report.html"} <= names
    assert any(n.startswith("data/") for n in names) and any(n.startswith("run/stages/01_finished/") for n in names)
    assert {p.relative_to(out).as_posix(): oct(mode(p)) for p in files} == {n: oct(0o644) for n in names}
    assert all(mode(p) == 0o755 for p in out.rglob("*") if p.is_dir())

"""The run directory: stage shards as Parquet, written atomically, and the manifest that records them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from datagen.errors import DatagenError

RUN_SUBDIR = "run"
MANIFEST = "manifest.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_parquet(path: Path, frame: pl.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        frame.write_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """OUT/run/: prompts.parquet, stages/NN_label/shard-XXXXX.parquet and manifest.json."""

    def __init__(self, out: Path):
        self.out = out
        self.root = out / RUN_SUBDIR
        self.manifest_path = self.root / MANIFEST

    def stage_dir(self, index: int, label: str) -> Path:
        return self.root / "stages" / f"{index:02d}_{label}"

    def shard_path(self, index: int, label: str, shard: int) -> Path:
        return self.stage_dir(index, label) / f"shard-{shard:05d}.parquet"

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as err:
            raise DatagenError(f"unreadable run manifest ({err}); use --force to start over", self.manifest_path) from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def prepare(self, fingerprint: str, force: bool) -> dict[str, Any]:
        """Open the output directory for this recipe: resume its own run, refuse anyone else's."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise DatagenError("output path exists and is not a directory", out)
        manifest = self.read_manifest() if out.exists() else None
        if manifest is not None and manifest.get("fingerprint") != fingerprint and not force:
            raise DatagenError(
                "holds a run of a different recipe (or changed templates); use --force to replace it, or another --out", out
            )
        if manifest is None and out.exists() and any(out.iterdir()) and not force:
            raise DatagenError("output directory is not empty and holds no datagen run; choose another --out", out)
        if force and out.exists() and (manifest is None or manifest.get("fingerprint") != fingerprint):
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            manifest = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise DatagenError(f"cannot write to the output directory ({err.strerror})", out) from None
        return manifest or {"fingerprint": fingerprint, "stages": {}, "complete": False}

"""The run directory: stage shards as Parquet, written atomically, and the manifest that records them.

A shard counts as finished only when the manifest records it with the key it was computed for
(the stage's key plus the content of its input) and the digest of the file that was written; a
run killed at any point leaves at most an unrecorded shard or a temporary file, both redone or
removed by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from datagen.errors import DatagenError

RUN_SUBDIR = "run"
MANIFEST = "manifest.json"
KEY_CHARS = 20


def content_key(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:KEY_CHARS]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:KEY_CHARS]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    """A fresh temporary file next to `path`; its name starts with a dot, so no glob of shards matches it.

    Created with mode 0666 under the umask, as open() creates files, rather than with mkstemp's
    0600: the rename makes it the output file, which others may need to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_parquet(path: Path, frame: pl.DataFrame) -> str:
    """Write via a temporary file and a rename; returns the digest of the file written."""
    tmp = _temporary(path)
    try:
        frame.write_parquet(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        digest = file_digest(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def _valid_manifest(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("fingerprint"), str)
        and isinstance(data.get("stages"), dict)
        and all(isinstance(entry, dict) and isinstance(entry.get("shards"), dict) for entry in data["stages"].values())
    )


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
            data = json.loads(self.manifest_path.read_bytes())
        except (OSError, ValueError) as err:
            reason = err.strerror if isinstance(err, OSError) else str(err)
            raise DatagenError(f"unreadable run manifest ({reason}); use --force to start over", self.manifest_path) from None
        if not _valid_manifest(data):
            raise DatagenError("not a datagen run manifest; use --force to start over", self.manifest_path)
        return data

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def shard_done(self, index: int, label: str, shard: int, record: dict[str, Any] | None, key: str) -> bool:
        """Finished: recorded for this very input, and the file is the one that was recorded."""
        if not record or record.get("key") != key or "digest" not in record:
            return False
        path = self.shard_path(index, label, shard)
        return path.is_file() and file_digest(path) == record["digest"]

    def prepare(self, fingerprint: str, force: bool) -> dict[str, Any]:
        """Open the output directory for this recipe: resume its own run, refuse anyone else's."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise DatagenError("output path exists and is not a directory", out)
        try:
            manifest = self.read_manifest() if out.exists() else None
        except DatagenError:
            if not force:
                raise
            manifest = None
        if manifest is not None and manifest.get("fingerprint") != fingerprint and not force and _has_work(manifest):
            raise DatagenError(
                "holds a run of a different recipe (or changed templates); use --force to replace it, or another --out", out
            )
        if manifest is None and not force and _foreign_entries(out):
            raise DatagenError("output directory is not empty and holds no datagen run; choose another --out", out)
        if out.exists() and (manifest is None or manifest.get("fingerprint") != fingerprint) and (force or manifest is not None):
            for child in out.iterdir():  # replaced: --force, or a run of another recipe that finished nothing
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            manifest = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise DatagenError(f"cannot write to the output directory ({err.strerror})", out) from None
        self._remove_temporaries()
        if manifest is None:
            return {"fingerprint": fingerprint, "stages": {}, "complete": False}
        manifest["complete"] = False  # until this run has written its dataset again
        return manifest

    def _remove_temporaries(self) -> None:
        """Leftovers of writes that a killed run did not finish (never recorded anywhere)."""
        for path in self.root.rglob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)


def _has_work(manifest: dict[str, Any]) -> bool:
    return any(entry["shards"] for entry in manifest["stages"].values())


def _foreign_entries(out: Path) -> list[Path]:
    """What the output directory holds besides an empty run directory left by a failed start."""
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if not (p.name == RUN_SUBDIR and p.is_dir() and not any(p.iterdir()))]

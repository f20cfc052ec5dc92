"""The run directory: stage shards as Parquet, written atomically, and the manifest that records them.

A shard counts as finished only when the manifest records it with the key it was computed for
(the stage's key plus the content of its input) and the digest of the file that was written; a
run killed at any point leaves at most an unrecorded shard or a temporary file, both redone or
removed by the next run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import polars as pl

from datagen.errors import DatagenError

RUN_SUBDIR = "run"
MANIFEST = "manifest.json"
LOCK = ".lock"
# What datagen writes in OUT: patterns relative to OUT (run/stages/*/ holds shards, .tmp files are
# interrupted writes). Everything else in OUT is the user's and is never removed.
OWN_FILES = (
    r"run/(manifest\.json|prompts\.parquet|report\.html|engine\.log)",  # not run/.lock: removing it would void the lock held
    r"run/stages/\d\d_[^/]+/shard-\d{5}\.parquet",
    r"run/cache/[a-z][a-z0-9_]*/verdicts-[0-9a-f]{20}\.json",  # a judge's verdicts (datagen.steps.judge)
    r"(pairs/)?(data|\.data\.tmp)/train-\d{5}-of-\d{5}\.parquet",
    r"(pairs/)?README\.md",
    r"(.*/)?\.[^/]+\.[0-9a-f]{12}\.tmp",
)
OWN_DIRS = ("run", "run/stages", "run/cache", "data", ".data.tmp", "pairs", "pairs/data", "pairs/.data.tmp")
CARD_MARKER = "\n- datagen\n"  # the card's YAML header lists the tag 'datagen' (datagen.outputs.writer)
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
        self._lock_fd: int | None = None

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
        """Finished: recorded for this very input, with no prompt left pending (a request that failed
        for a transient reason), and the file is the one that was recorded."""
        if not record or record.get("key") != key or "digest" not in record or record.get("pending"):
            return False
        path = self.shard_path(index, label, shard)
        return path.is_file() and file_digest(path) == record["digest"]

    def prepare(self, fingerprint: str, force: bool, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
        """Open the output directory for this recipe: resume its own run, refuse anyone else's.

        Takes the run's lock (see `lock`), held until `release`. Only datagen's own files are
        ever removed (`remove_own_files`): a folder that holds no run is refused even with
        `force`, and the user's files next to a run are left as they are.

        `resolved` (see `resolved_recipe`) is stored in the manifest; a run of another recipe is
        refused naming the fields that differ from the one stored there.

        Raises DatagenError: OUT is a file, holds no run but other files, holds a run of another
        recipe (without `force`), holds a file where datagen writes its dataset, is locked by
        another run, or cannot be written.
        """
        out = self.out
        if out.exists() and not out.is_dir():
            raise DatagenError("output path exists and is not a directory", out)
        is_run = self.manifest_path.is_file()
        if not is_run and _foreign_entries(out):
            hint = "--force only replaces a datagen run; " if force else ""
            raise DatagenError(f"output directory is not empty and holds no datagen run; {hint}choose another --out", out)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"  # one per process: two runs may start at once
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise DatagenError(f"cannot write to the output directory ({err.strerror})", out) from None
        self.lock()
        try:
            manifest = self._open(fingerprint, force, resolved)
        except BaseException:
            self.release()
            raise
        if resolved is not None:
            manifest["resolved"] = resolved
        return manifest

    def _open(self, fingerprint: str, force: bool, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
        out = self.out
        try:
            manifest = self.read_manifest()
        except DatagenError:
            if not force:
                raise
            manifest = None
        if manifest is not None and manifest.get("fingerprint") != fingerprint and not force and _has_work(manifest):
            changed = recipe_changes(manifest.get("resolved"), resolved)
            what = f"holds a run of a different recipe ({changed})" if changed else "holds a run of a different recipe (or changed templates)"
            raise DatagenError(f"{what}; use --force to replace it, or another --out", out)
        stranger = _stranger_in_dataset(out)
        if stranger is not None:
            raise DatagenError(
                "holds a file datagen did not write where it writes the dataset; move it away (datagen replaces data/, pairs/ and README.md)",
                stranger,
            )
        if manifest is None or manifest.get("fingerprint") != fingerprint:
            # Replaced: --force, or a run of another recipe that finished nothing.
            remove_own_files(out)
            manifest = None
        self._remove_temporaries()
        if manifest is None:
            return {"fingerprint": fingerprint, "stages": {}, "complete": False}
        manifest["complete"] = False  # until this run has written its dataset again
        return manifest

    def lock(self) -> None:
        """An exclusive advisory lock (fcntl.flock) on OUT/run/.lock, so that a second run into the
        same directory stops at once instead of interleaving its shards with this one's. Released
        by `release` or when the process ends, however it ends."""
        if self._lock_fd is not None:
            return
        path = self.root / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatagenError("another datagen run is writing to this directory; wait for it to finish or choose another --out", self.out) from None
        self._lock_fd = fd

    def release(self) -> None:
        """Give up the lock taken by `prepare` (idempotent)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _remove_temporaries(self) -> None:
        """Leftovers of writes that a killed run did not finish (never recorded anywhere)."""
        for path in self.root.rglob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)


# The recipe fields that decide generation (what LoadedRecipe.fingerprint covers).
GENERATION_FIELDS = ("seed", "templates", "backend", "execution", "input", "budget")
CHANGES_SHOWN = 4


def resolved_recipe(loaded: Any) -> dict[str, Any]:
    """What the manifest keeps of a recipe to say later what changed: its resolved fields (after
    --set and defaults), a digest of each template file, and of each data source's content (a
    changed source row changes the prompt ids drawn from it, so only their shards run again)."""
    return {
        "recipe": loaded.recipe.model_dump(mode="json"),
        "template_files": {name: file_digest(t.path) for name, t in sorted(loaded.templates.items())},
        "data_files": {name: {"path": str(s.path), "digest": s.digest} for name, s in sorted(getattr(loaded, "sources", {}).items())},
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in value.items()]
    elif isinstance(value, list) and value:
        items = [(f"{prefix}.{i}", v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    return {key: leaf for k, v in items for key, leaf in _flatten(v, k).items()}


def recipe_changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """The generation fields that differ, as 'backend.sampling.max_tokens: 128 -> 256; ...' (the
    first CHANGES_SHOWN, then a count), and changed template files; '' when either side is unknown
    (a manifest written before the resolved recipe was stored)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return ""
    old = _flatten({k: v for k, v in (before.get("recipe") or {}).items() if k in GENERATION_FIELDS})
    new = _flatten({k: v for k, v in (after.get("recipe") or {}).items() if k in GENERATION_FIELDS})
    missing = object()
    changes = [
        f"{key}: {json.dumps(old.get(key)) if key in old else '(unset)'} -> {json.dumps(new.get(key)) if key in new else '(unset)'}"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]
    files_before, files_after = before.get("template_files") or {}, after.get("template_files") or {}
    changes += [f"template file {name!r} changed" for name in sorted(set(files_before) & set(files_after)) if files_before[name] != files_after[name]]
    if len(changes) > CHANGES_SHOWN:
        changes = changes[:CHANGES_SHOWN] + [f"and {len(changes) - CHANGES_SHOWN} more"]
    return "; ".join(changes)


def _own(relative: str) -> bool:
    return any(re.fullmatch(pattern, relative) for pattern in OWN_FILES)


def _is_card(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192).decode("utf-8", "replace")
    except OSError:
        return False
    return head.startswith("---\n") and CARD_MARKER in head


def _stranger_in_dataset(out: Path) -> Path | None:
    """A file of the user's where the writer replaces the dataset (data/, pairs/, README.md)."""
    for name in ("README.md", "pairs/README.md"):
        if (out / name).exists() and not ((out / name).is_file() and _is_card(out / name)):
            return out / name
    for folder in ("data", "pairs", "pairs/data", ".data.tmp", "pairs/.data.tmp"):
        if (out / folder).is_symlink() or ((out / folder).exists() and not (out / folder).is_dir()):
            return out / folder
        for path in sorted((out / folder).glob("*")) if (out / folder).is_dir() else []:
            relative = path.relative_to(out).as_posix()
            if not (_own(relative) or relative.rstrip("/") in OWN_DIRS) or path.is_symlink():
                return path
    return None


def _own_dirs(out: Path) -> list[Path]:
    """The folders datagen writes in, deepest first (run/stages/NN_label before run/stages)."""
    stages, cache = out / "run" / "stages", out / "run" / "cache"
    found = [p for p in stages.iterdir() if p.is_dir() and not p.is_symlink() and re.fullmatch(r"\d\d_[^/]+", p.name)] if stages.is_dir() and not stages.is_symlink() else []
    found += [p for p in cache.iterdir() if p.is_dir() and not p.is_symlink() and re.fullmatch(r"[a-z][a-z0-9_]*", p.name)] if cache.is_dir() and not cache.is_symlink() else []
    return found + [out / d for d in sorted(OWN_DIRS, key=lambda d: -d.count("/"))]


def remove_own_files(out: Path) -> list[Path]:
    """Remove what datagen wrote in OUT (OWN_FILES; a README.md only if it is datagen's card),
    then the folders that this leaves empty; returns what was removed. Anything else (the user's
    files, also inside run/ or data/) stays, with the folders that hold it. Symbolic links are
    never followed."""
    removed: list[Path] = []
    if not out.is_dir():
        return removed
    for folder in [out, *_own_dirs(out)]:
        if folder.is_symlink() or not folder.is_dir():
            continue
        for path in folder.iterdir():
            relative = path.relative_to(out).as_posix()
            if not path.is_symlink() and path.is_file() and _own(relative) and (not relative.endswith("README.md") or _is_card(path)):
                path.unlink()
                removed.append(path)
    for folder in _own_dirs(out):
        if not folder.is_symlink() and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            removed.append(folder)
    return removed


def remove_stage_files(directory: Path) -> None:
    """Empty a stage's folder of its shards (and interrupted writes), then remove it if nothing
    else is left in it: a file the user put there stays."""
    if directory.is_symlink() or not directory.is_dir():
        return
    for path in directory.iterdir():
        if not path.is_symlink() and path.is_file() and re.fullmatch(r"shard-\d{5}\.parquet|\.[^/]+\.[0-9a-f]{12}\.tmp", path.name):
            path.unlink()
    if not any(directory.iterdir()):
        directory.rmdir()


def _has_work(manifest: dict[str, Any]) -> bool:
    return any(entry["shards"] for entry in manifest["stages"].values())


def _foreign_entries(out: Path) -> list[Path]:
    """What the output directory holds besides a run directory left by a failed start (empty, or
    only its lock)."""
    if not out.is_dir():
        return []

    def leftover(p: Path) -> bool:
        return p.name == RUN_SUBDIR and p.is_dir() and not p.is_symlink() and all(q.name == LOCK or q.name.startswith(".write-test") for q in p.iterdir())

    return [p for p in out.iterdir() if not leftover(p)]

"""Content-addressed artifact store of the grid runner, with file locks and an execution log.

Every stage artifact (poisoned backbone, tuned victim, scan, fitted defence) lives under
``DIR/artifacts/<kind>/<name>-<key>/`` where ``key`` hashes the stage's configuration together with
the keys of its inputs (:func:`stage_key`): two cells that need the same poisoned backbone compute
the same key and share one folder, and changing any setting that shapes an artifact gives a new
key instead of silently reusing a stale one. A folder is complete or absent: it is filled under a
temporary name and renamed (:func:`peftshield.utils.io.atomic_dir`), and its ``artifact.json``
records what was built, from what, how long it took and what the builder measured.

Parallel workers coordinate with file locks (the ``filelock`` package, so not POSIX-only), one per
artifact: a worker that needs an
artifact another worker is building waits for the lock, then finds the folder and reuses it, so
no artifact is ever built twice. Every build, reuse and cell outcome is appended as one JSON line
to ``DIR/log/stages.jsonl`` (the execution log the tests and the curious read).

Bump :data:`CACHE_VERSION` when a change in the code changes what a stage produces for the same
configuration; otherwise delete ``DIR/artifacts/<kind>`` to rebuild one kind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError

#: Part of every stage key; bump it to invalidate every cached artifact at once.
CACHE_VERSION = 1
ARTIFACT_FILE = "artifact.json"
ARTIFACTS_DIR = "artifacts"
CELLS_DIR = "cells"
LOG_DIR = "log"
STAGE_LOG = "stages.jsonl"
RUN_LOG = "run.log"
LOCKS_DIR = ".locks"


def digest(data: Any, length: int = 16) -> str:
    """Hex SHA-256 of ``data`` as canonical JSON (sorted keys), cut to ``length`` characters."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (read in chunks)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def folder_digest(folder: str | os.PathLike) -> str:
    """SHA-256 over every regular file of a folder tree (relative names and contents), in sorted order.

    The identity of a local backbone folder: editing its weights, config or tokenizer changes it.
    Hidden files (names starting with a dot) are left out.
    """
    root = Path(folder)
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        sha.update(str(rel.as_posix()).encode("utf-8") + b"\0")
        sha.update(file_digest(path).encode("ascii") + b"\0")
    return sha.hexdigest()


@dataclass
class Stage:
    """One cacheable step of a cell: what it builds (``spec``), from what (``inputs``), and its key.

    ``spec`` holds everything that shapes the artifact and is hashed; ``inputs`` maps a role
    (``backbone``, ``victim``, ``scan``) to the key or identity of what the stage reads, and is
    hashed too; ``args`` holds what the builder needs to FIND its inputs (paths, references,
    labels) and is not hashed, so moving a corpus file or the results folder does not invalidate
    the cache while changing its content does.
    """

    kind: str
    name: str
    spec: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = stage_key(self.kind, self.spec, self.inputs)

    @property
    def folder_name(self) -> str:
        """``<name>-<key>``: readable and unique."""
        return f"{self.name}-{self.key}"

    def describe(self) -> str:
        """Short label for logs: ``poison:badnets-1a2b3c4d``."""
        return f"{self.kind}:{self.name}-{self.key[:8]}"


def stage_key(kind: str, spec: dict[str, Any], inputs: dict[str, str]) -> str:
    """The content key of a stage: a hash of its kind, configuration and inputs' keys."""
    return digest({"cache_version": CACHE_VERSION, "kind": kind, "spec": spec, "inputs": inputs})


class StageLog:
    """Append-only JSON-lines log shared by every process of a run (one ``write`` per line)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        """Append one event with a timestamp and the writer's process id."""
        record = {"time": round(time.time(), 3), "pid": os.getpid(), "event": event, **fields}
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND makes each single write land whole at the end, even with several writers.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """Every event logged so far (an absent log is empty)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a killed writer: ignore it
                    continue
        return out


@contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` for the block; yield whether it was acquired.

    With ``blocking=False`` the block runs at once and gets ``False`` when another holder has the
    lock. The lock is :class:`filelock.FileLock` (``flock`` on POSIX, ``msvcrt`` locking on
    Windows), which the operating system releases when its holder dies, so a killed run never
    leaves a stale lock behind.
    """
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, mode=0o644)
    try:
        lock.acquire(timeout=-1 if blocking else 0)
        acquired = True
    except Timeout:
        acquired = False
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()


class ArtifactStore:
    """The ``DIR/artifacts`` tree: look up, build once (locked, atomic) and describe stage artifacts."""

    def __init__(self, results: str | os.PathLike, log: StageLog | None = None) -> None:
        self.results = Path(results)
        self.root = self.results / ARTIFACTS_DIR
        self.log = log or StageLog(self.results / LOG_DIR / STAGE_LOG)

    def folder(self, stage: Stage) -> Path:
        """Where ``stage``'s artifact lives (whether or not it exists yet)."""
        return self.root / stage.kind / stage.folder_name

    def is_built(self, stage: Stage) -> bool:
        """Whether ``stage``'s artifact is complete on disk."""
        return (self.folder(stage) / ARTIFACT_FILE).is_file()

    def record(self, stage: Stage) -> dict[str, Any]:
        """The ``artifact.json`` of a built stage."""
        from peftshield.utils.io import read_json

        return read_json(self.folder(stage) / ARTIFACT_FILE)

    def get_or_build(
        self,
        stage: Stage,
        build: Callable[[Path], dict[str, Any] | None],
        *,
        payload: str,
        cell: str = "",
    ) -> tuple[Path, dict[str, Any], bool]:
        """Return ``(payload folder, artifact record, built_now)``, building the artifact if needed.

        ``build(out)`` must write the artifact into the folder ``out`` (which does not exist yet)
        and may return a JSON-ready dict of what it measured (stored as ``info``). The build runs
        under the artifact's lock and inside a temporary folder renamed into place on success; a
        failure leaves nothing behind.
        """
        from peftshield.utils.io import atomic_dir, write_json
        from peftshield.utils.runinfo import run_metadata

        final = self.folder(stage)
        if self.is_built(stage):
            self.log.write("reused", kind=stage.kind, key=stage.key, name=stage.name, cell=cell)
            return final / payload, self.record(stage), False
        with file_lock(self.root / LOCKS_DIR / f"{stage.kind}-{stage.key}.lock"):
            if self.is_built(stage):  # another worker built it while this one waited
                self.log.write("reused", kind=stage.kind, key=stage.key, name=stage.name, cell=cell)
                return final / payload, self.record(stage), False
            if final.exists():  # an incomplete folder cannot be produced by atomic_dir; be safe
                shutil.rmtree(final)
            self.log.write("start", kind=stage.kind, key=stage.key, name=stage.name, cell=cell)
            started = time.perf_counter()
            try:
                with atomic_dir(final) as tmp:
                    info = build(tmp / payload) or {}
                    seconds = time.perf_counter() - started
                    record = {
                        "kind": stage.kind,
                        "name": stage.name,
                        "key": stage.key,
                        "spec": stage.spec,
                        "inputs": stage.inputs,
                        "payload": payload,
                        "seconds": round(seconds, 3),
                        "built_by": {"cell": cell, "pid": os.getpid(), "host": socket.gethostname()},
                        "info": info,
                        "meta": run_metadata(),
                    }
                    write_json(tmp / ARTIFACT_FILE, record)
            except BaseException as err:
                self.log.write(
                    "failed", kind=stage.kind, key=stage.key, name=stage.name, cell=cell, error=repr(err)
                )
                raise
            self.log.write(
                "built", kind=stage.kind, key=stage.key, name=stage.name, cell=cell, seconds=round(seconds, 3)
            )
        return final / payload, record, True

    def clean_partials(self) -> int:
        """Remove temporary folders left by a killed run (``.<name>.*.partial`` / ``.old``); return how many.

        Call only while holding the run lock: no other process may be building then.
        """
        removed = 0
        if not self.root.is_dir():
            return 0
        for kind_dir in self.root.iterdir():
            if not kind_dir.is_dir() or kind_dir.name == LOCKS_DIR:
                continue
            for entry in kind_dir.iterdir():
                if entry.name.startswith(".") and entry.name.endswith((".partial", ".old")):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
        return removed


def check_results_dir(results: str | os.PathLike) -> Path:
    """Create the results folder if needed and prove it writable, before any cell runs."""
    path = Path(results).expanduser()
    if path.is_symlink() and not path.exists():
        raise PeftshieldError(
            f"results folder {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
            "create its target or remove the link"
        )
    if path.exists() and not path.is_dir():
        raise PeftshieldError(f"results folder {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        raise PeftshieldError(f"results folder {path} is not writable: {err.strerror or err}") from None
    return path

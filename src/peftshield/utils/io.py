"""Atomic file and folder writes: an artifact is either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or malformed file into a one-line user error."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise PeftshieldError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PeftshieldError(f"{path} is not valid JSON: {err}") from None


def check_output_dir(target: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail early, before any long work, if ``target`` cannot be written as an output folder."""
    target = Path(target)
    if target.is_symlink() and not target.exists():
        raise PeftshieldError(
            f"output folder {target} is a dangling symbolic link (to {os.readlink(target)}); remove it "
            "or choose another --out"
        )
    if target.exists() and not overwrite:
        raise PeftshieldError(f"output folder already exists: {target} (use --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise PeftshieldError(f"output folder {target} exists and is not a folder")
    old = _old_name(target)
    if old.is_symlink() or (old.exists() and not old.is_dir()):
        raise PeftshieldError(
            f"{old} is left over from an earlier run and is not a folder; remove it before writing {target}"
        )
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise PeftshieldError(f"cannot write to {parent}")


def _old_name(target: Path) -> Path:
    """Where :func:`atomic_dir` parks the folder it replaces until the new one is in place."""
    return target.with_name(f".{target.name}.old")


@contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` that is renamed to ``target`` on success.

    On any exception the temporary folder is removed, so a failed run leaves nothing behind.
    An existing ``target`` is an error unless ``overwrite`` is set, in which case it is replaced
    only once the new content is complete.
    """
    target = Path(target)
    check_output_dir(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = _old_name(target)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)

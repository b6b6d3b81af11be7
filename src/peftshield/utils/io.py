"""Atomic file and folder writes: an artifact is either complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from peftshield.errors import PeftshieldError


def _fresh_temporary(path: Path) -> tuple[Path, TextIO]:
    """Open a new hidden file beside ``path`` for writing text (its name is unique to this call).

    Opened exclusively with the ordinary creation mode (``0666`` less the umask), not with
    :func:`tempfile.mkstemp`, whose ``0600`` mode would survive the rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    return tmp, open(tmp, "x", encoding="utf-8")  # noqa: SIM115 - closed by the callers


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[TextIO]:
    """Yield a text handle whose content replaces ``path`` (by a rename) only once it is complete.

    The one atomic file write of the package: on any exception the temporary file is removed and
    ``path`` is left as it was (absent or the previous complete version).
    """
    path = Path(path)
    tmp, handle = _fresh_temporary(path)
    try:
        with handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as handle:
        handle.write(text)


def write_texts(files: Mapping[Path, str]) -> None:
    """Write several files all or nothing: every temporary file is complete before any is renamed."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            tmp, handle = _fresh_temporary(Path(path))
            temps.append((tmp, Path(path)))
            with handle:
                handle.write(text)
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as JSON lines to ``path`` atomically (:func:`atomic_file`); return the row count."""
    count = 0
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False))
            handle.write("\n")
            count += 1
    return count


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


def model_cache_complete(folder: Path, record_name: str, key: str, sha256: str) -> bool:
    """Whether a model folder built once into the cache is complete and built from ``sha256``.

    It must hold ``config.json``, safetensors weights and its build record ``record_name``, whose
    ``key`` names the sha256 of the source artifact it was built from (a GGUF file, a split zip).
    Anything else (a folder from an interrupted build, another source, an unreadable record) is
    incomplete and is rebuilt.
    """
    record_path = folder / record_name
    if not record_path.is_file() or not (folder / "config.json").is_file():
        return False
    if not any(p.name.endswith(".safetensors") for p in folder.iterdir()):
        return False
    try:
        record = read_json(record_path)
    except PeftshieldError:
        return False
    return isinstance(record, dict) and record.get(key) == sha256

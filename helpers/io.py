"""Small file utilities shared by every step: atomic outputs and SHA256 manifests."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .core import CourseError

MANIFEST = "SHA256SUMS"


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False):
    """Yield a temporary folder beside ``target``; rename it to ``target`` only when the block succeeds.

    An existing ``target`` is refused unless ``overwrite`` (then it is replaced only at the end,
    so a crash never leaves a half-written model behind).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise CourseError(f"{target}: output folder already exists; pass --overwrite (overwrite=True) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text to ``path`` through a temporary file and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CourseError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise CourseError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tree_files(folder: str | Path, exclude: tuple[str, ...] = (MANIFEST,)) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in exclude)


def sha256_tree(folder: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` for every file under ``folder`` (the manifest itself excluded)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in tree_files(folder)}


def write_manifest(folder: str | Path, name: str = MANIFEST, known: dict[str, str] | None = None) -> Path:
    """Write ``sha256sum``-compatible lines (``<hash>  <path>``) for every file in ``folder``; ``known`` gives
    digests computed while the files were written (``{relative path: sha256}``), the others are read and hashed."""
    folder = Path(folder)
    known = known or {}
    digests = {p.relative_to(folder).as_posix(): known.get(p.relative_to(folder).as_posix()) or sha256_file(p)
               for p in tree_files(folder)}
    lines = [f"{digest}  {rel}" for rel, digest in digests.items()]
    return atomic_write_text(folder / name, "\n".join(lines) + "\n")


def read_manifest(path: str | Path) -> dict[str, str]:
    out = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise CourseError(f"{path}: line {n} is not '<sha256>  <file>': {line!r}")
        out[parts[1].lstrip("*").strip()] = parts[0].lower()
    return out


def verify_manifest(folder: str | Path, manifest: str | Path | None = None) -> dict[str, list[str]]:
    """Compare ``folder`` with a manifest: ``{"mismatch": [...], "missing": [...], "extra": [...]}``."""
    folder = Path(folder)
    want = read_manifest(manifest or folder / MANIFEST)
    have = sha256_tree(folder)
    return {
        "mismatch": sorted(k for k in want if k in have and have[k] != want[k]),
        "missing": sorted(k for k in want if k not in have),
        "extra": sorted(k for k in have if k not in want),
    }

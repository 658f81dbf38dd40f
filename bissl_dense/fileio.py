"""Atomic file writes: a reader (or a resumed run) sees the old file or the complete new one.

Every checkpoint, exported weight file and result file of the project goes through here. Framework
free (no mmengine), so the pretext weight export and the benchmarks can use it too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "staged_directory",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_directory",
]


def fsync_directory(directory: str | Path) -> None:
    """Flush a directory entry (a rename) to disk, where the platform has directory handles."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[IO[Any]], Any], mode: str = "wb") -> None:
    """Write through a temporary file beside ``path``, fsync it, and rename it over ``path``.

    On any failure (an exception, or a kill before the rename) ``path`` keeps its old content and
    the temporary file is removed (or, after a kill, left as a hidden ``.<name>.*.tmp``). The new
    file gets the usual permissions: ``mkstemp`` alone would leave it readable by its owner only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _default_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text), mode="w")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


@contextmanager
def staged_directory(root: str | Path) -> Iterator[Path]:
    """Yield a hidden staging directory beside ``root``; rename it to ``root`` on success.

    For data writers: a reader never sees a half-written dataset, and a killed writer leaves
    only a ``.<name>.partial-*`` directory behind (removed on errors). ``root`` must not exist
    or be an empty directory: existing data is never written into or over.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"output directory {root} already exists and is not empty; remove it or choose "
            "another output directory (data is never written into or over existing data)"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        if root.exists():
            root.rmdir()  # empty, checked above
        staging.rename(root)
        fsync_directory(root.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

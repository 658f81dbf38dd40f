"""Atomic writes: old content survives a failed write, no temporary file is left, and the new
file has the permissions the umask gives (not mkstemp's private 0600)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bissl_dense.fileio import atomic_torch_save, atomic_write_bytes, atomic_write_text


def test_failed_write_keeps_old_content_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.json"
    atomic_write_text(target, "old")

    def failing(handle) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    from bissl_dense.fileio import atomic_write

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_permissions_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_torch_save({"w": torch.ones(1)}, tmp_path / "b.pth")
    finally:
        os.umask(previous)
    for name in ("a.bin", "b.pth"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert torch.equal(torch.load(tmp_path / "b.pth", weights_only=True)["w"], torch.ones(1))

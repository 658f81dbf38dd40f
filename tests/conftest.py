"""Shared test set-up: CPU only, deterministic, few threads (CI has 2 cores)."""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# When the 2 cores are oversubscribed (spawned ranks, data-loader workers), OpenMP threads that
# busy-wait slow everything down by orders of magnitude; passive waiting costs nothing here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

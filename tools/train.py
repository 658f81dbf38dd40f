"""Train any stage from its config, as mmengine/mmseg users know it (same as ``bissl train``).

python tools/train.py CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--resume]
torchrun --nproc_per_node=8 tools/train.py CONFIG --launcher pytorch
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bissl_dense.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

"""Evaluate a checkpoint with a config's test data and metric (same as ``bissl test``).

python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--cfg-options k=v ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bissl_dense.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))

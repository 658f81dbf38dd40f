"""Pretext pretraining; same as ``bissl pretrain``, as a script for ``torchrun``.

    python tools/pretrain.py configs/pretext/simclr_resnet18_synthetic.py --work-dir work_dirs/x
    torchrun --nproc_per_node=8 tools/pretrain.py configs/pretext/simclr_resnet50_imagenet1k.py \
        --launcher pytorch --cfg-options train_dataloader.dataset.data_root=/data/imagenet/train
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bissl_dense.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))

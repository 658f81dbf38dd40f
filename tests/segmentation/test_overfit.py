"""Segmentation learns end to end (issue 21, "learning is shown"): the shipped VOC-aug fine-tuning
config, run by ``bissl train`` (= ``tools/train.py``: mmengine's runner, mmseg's FCN-16, the
project's loop, ``PerClassIoUMetric`` = mmseg's ``IoUMetric`` plus per-class IoU, best-checkpoint
selection and the test after training), fits a handful of generated VOC images to an mIoU of at
least 50 on those same images.

Passing needs every link to be right: VOC's palette masks decoded to class ids (255 = void), the
mask resized with its image, the data preprocessor's normalisation and padding, the head's
stride-16 logits upsampled onto the label grid, and the metric's class bookkeeping. The network
is the config's FCN-16 on a ResNet-18 (same names and dilated res5, as in test_stage.py) from
random weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bissl_dense.cli import main
from bissl_dense.datasets.synthetic import write_voc

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "segmentation" / "finetune_fcn_r50_voc_aug_synthetic.py"
EPOCHS = 48  # one step per epoch (the whole handful in one batch)


@pytest.mark.slow
def test_finetune_config_fits_a_handful_of_images(tmp_path: Path) -> None:
    # 4 segmented VOC2012 training images with 1-2 objects of 2 classes (aeroplane, bicycle)
    summary = write_voc(tmp_path / "voc", 16, seed=1, size=64, num_classes=2, max_objects=2)
    voc = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    images = voc / "ImageSets" / "Segmentation" / "train.txt"  # VOC's own masks (void borders)
    ids = images.read_text().split()
    drawn = {o["name"] for i in ids for o in summary["images"][f"VOC2012/{i}"]["objects"]}
    work = tmp_path / "work"
    options = [
        f"train_dataloader.dataset.dataset.data_root={voc}",
        f"train_dataloader.dataset.dataset.ann_file={images}",
        "train_dataloader.dataset.dataset.aug_ann_file=None",
        f"train_dataloader.batch_size={len(ids)}",
        f"val_dataloader.dataset.data_root={voc}",
        f"val_dataloader.dataset.ann_file={images}",
        "val_dataloader.dataset.aug_ann_file=None",
        f"test_dataloader.dataset.data_root={voc}",
        f"test_dataloader.dataset.ann_file={images}",  # tested on the images it trained on
        "model.backbone.depth=18",
        "model.decode_head.in_channels=512",
        "model.backbone.init_cfg=None",  # random weights
        f"train_cfg.max_epochs={EPOCHS}",
        f"train_cfg.val_interval={EPOCHS // 4}",
        f"param_scheduler.0.end={EPOCHS}",
        "optim_wrapper.optimizer.lr=0.05",  # within the search's range (SPEC §4: 1e-4 to 1)
        "default_hooks.checkpoint=None",  # no resume checkpoints (best.pth is still kept)
        "default_hooks.logger.interval=10",
    ]
    assert main(["train", str(CONFIG), "--work-dir", str(work), "--cfg-options", *options]) == 0
    results = json.loads((work / "results.json").read_text())
    print("mIoU on the training images:", results["test"])
    assert results["selection_metric"] == "mIoU"
    assert results["test"]["mIoU"] >= 50.0
    # the palette masks arrive as the classes drawn: IoU is defined (not NaN) for background and
    # exactly those, under their VOC names
    scored = {
        k[4:] for k, v in results["test"].items() if k.startswith("IoU.") and not math.isnan(v)
    }
    assert scored == {"background", *drawn}

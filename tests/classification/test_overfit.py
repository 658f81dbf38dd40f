"""Classification learns end to end (issue 21, "learning is shown"): the shipped fine-tuning config,
run by ``bissl train`` (mmengine's runner, the project's loop, ``ClassificationMetric``, best-
checkpoint selection and the test after training), fits a handful of generated images to at least
90 % top-1 on those same images.

Passing needs every link to be right: the ImageFolder class map (the label an image arrives with
is its folder's class), the training transform, the optimiser and schedule of the config, the
metric and the checkpoint it selects. A ResNet-18 from random weights keeps it fast; the images
are the generator's shapes and stripes (class-dependent), not solid colours.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bissl_dense.cli import main
from bissl_dense.datasets.synthetic import write_imagefolder

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "classification" / "finetune_resnet18_synthetic.py"
EPOCHS = 48  # one step per epoch (the whole handful in one batch)


@pytest.mark.slow
def test_finetune_config_fits_a_handful_of_images(tmp_path: Path) -> None:
    data = tmp_path / "images"
    summary = write_imagefolder(data, 30, num_classes=5, seed=0, size=32)
    n_train = sum(summary["counts"]["train"].values())  # 18: 3-4 per class
    work = tmp_path / "work"
    on_train = ["split=train", "transform=eval"]  # evaluated on the images it trained on
    options = [
        f"train_dataloader.dataset.data_root={data}",
        f"val_dataloader.dataset.data_root={data}",
        f"test_dataloader.dataset.data_root={data}",
        *[f"{loader}_dataloader.dataset.{o}" for loader in ("val", "test") for o in on_train],
        f"train_dataloader.batch_size={n_train}",
        *[
            f"{loader}_dataloader.{key}"
            for loader in ("train", "val", "test")
            for key in ("num_workers=0", "persistent_workers=False")
        ],
        f"train_cfg.max_epochs={EPOCHS}",
        f"train_cfg.val_interval={EPOCHS // 4}",
        f"param_scheduler.0.end={EPOCHS}",
        "optim_wrapper.optimizer.lr=0.05",  # within the search's range (SPEC §4: 1e-4 to 1)
        "default_hooks.checkpoint=None",  # no resume checkpoints (best.pth is still kept)
        "default_hooks.logger.interval=10",
    ]
    assert main(["train", str(CONFIG), "--work-dir", str(work), "--cfg-options", *options]) == 0
    results = json.loads((work / "results.json").read_text())
    print("top-1 on the training images:", results["test"])
    assert results["selection_metric"] == "classification/top1"
    assert results["test"]["classification/top1"] >= 90.0

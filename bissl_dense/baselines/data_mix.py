"""Continued pretext training on pretext + downstream images (SPEC §6, paper App. B.9.3).

The baseline resumes self-supervised pretraining "after adding the downstream data to the
original pretraining data pool": the same pretext method (SimCLR/BYOL from the BiSSL config's
``model.pretext``, starting at the pretext backbone and head), the pretext optimiser settings of
BiSSL's lower level (LARS, lr 1.0, wd 1e-6; a cosine-decayed learning rate without warm-up), on
:class:`MixedPretextDataset`: every pretext image and every downstream *training* image, labels
ignored, the downstream images given the pretext's two-view augmentation. Drawing uniformly from
the pooled set, a batch holds downstream images in the proportion n_D / (n_P + n_D).

Budget: T·N_L steps of the pretext batch, the number of pretext updates BiSSL's lower level makes
(``train_cfg.steps`` overrides it). The paper states it in pretext epochs ("roughly equivalent"
to BiSSL's); its numbers did not survive the text conversion, so the equal number of pretext
steps is the comparable budget here.

The downstream dataset is the BiSSL config's own ``train_dataloader.dataset`` (any of the 12
classification data sets in its real layout, or an ImageFolder), wrapped, not re-listed: its
un-transformed images are read through its ``base`` split (``ClassificationDataset``) or, for
other datasets, from items whose first element is a PIL image.

Config: one that inherits the BiSSL config and states the differences
(``configs/classification/data_mix_simclr_resnet18_synthetic.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmengine.registry import DATASETS, LOOPS
from PIL import Image
from torch.utils.data import Dataset

from bissl_dense.baselines.single_level import SingleLevelLoop
from bissl_dense.engine.bissl_loop import BiSSLModel, _loader_options
from bissl_dense.errors import DataError
from bissl_dense.pretext.transforms import PretextAugmentation
from bissl_dense.stage import SeededDataset, pretext_lower_loss

__all__ = ["DataMixLoop", "MixedPretextDataset"]


def _build(dataset: Any) -> Any:
    return DATASETS.build(dict(dataset)) if isinstance(dataset, Mapping) else dataset


@DATASETS.register_module()
class MixedPretextDataset(Dataset):
    """The pretext images followed by the downstream training images, as two-view items.

    Args:
        pretext: the pretext dataset or its config (items ``{"inputs": [view1, view2]}``, e.g.
            ``PretextImageFolder``); indices ``0 .. n_P − 1``.
        downstream: the downstream dataset or its config; indices ``n_P .. n_P + n_D − 1``.
            Its labels are dropped and its own transform bypassed (``base`` split) so that its
            images get the pretext augmentation.
        augmentation: ``PretextAugmentation`` options for the downstream images; by default the
            pretext dataset's own ``augmentation`` object (identical views for both sources).

    Random draws happen in ``__getitem__``; the BiSSL batch sources apply them under each draw's
    seed (:class:`~bissl_dense.stage.SeededDataset`), so resumed runs replay the same crops.
    """

    def __init__(
        self, pretext: Any, downstream: Any, augmentation: Mapping[str, Any] | None = None
    ) -> None:
        self.pretext = _build(pretext)
        self.downstream = _build(downstream)
        if isinstance(self.downstream, SeededDataset):
            self.downstream = self.downstream.dataset
        if augmentation is not None:
            self.augmentation = PretextAugmentation(**dict(augmentation))
        elif isinstance(getattr(self.pretext, "augmentation", None), PretextAugmentation):
            self.augmentation = self.pretext.augmentation
        else:
            raise DataError(
                f"MixedPretextDataset: the pretext dataset {type(self.pretext).__name__} has no "
                "PretextAugmentation 'augmentation'; pass augmentation=dict(image_size=..., ...)"
            )
        self.num_pretext = len(self.pretext)
        self.num_downstream = len(self.downstream)
        if self.num_pretext == 0 or self.num_downstream == 0:
            raise DataError(
                f"MixedPretextDataset: {self.num_pretext} pretext and {self.num_downstream} "
                "downstream images; both sources must hold images"
            )

    def __len__(self) -> int:
        return self.num_pretext + self.num_downstream

    @property
    def downstream_fraction(self) -> float:
        """n_D / (n_P + n_D): the expected share of downstream images in a uniform draw."""
        return self.num_downstream / len(self)

    def is_downstream(self, index: int) -> bool:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return index >= self.num_pretext

    def downstream_image(self, index: int) -> Image.Image:
        """The ``index``-th downstream training image, untransformed (its label dropped)."""
        base = getattr(self.downstream, "base", None)
        item = base[index] if base is not None else self.downstream[index]
        image = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(image, Image.Image):
            raise DataError(
                f"MixedPretextDataset: downstream item {index} of "
                f"{type(self.downstream).__name__} is a {type(image).__name__}, not a PIL image; "
                "give a dataset with a 'base' split of (PIL image, label) items "
                "(ClassificationDataset) or one that yields PIL images"
            )
        return image.convert("RGB")

    def __getitem__(self, index: int) -> dict[str, list[Any]]:
        if not self.is_downstream(index):
            return self.pretext[index]
        view1, view2 = self.augmentation(self.downstream_image(index - self.num_pretext))
        return {"inputs": [view1, view2]}


@LOOPS.register_module()
class DataMixLoop(SingleLevelLoop):
    """Continued pretext training on :class:`MixedPretextDataset` (module docstring).

    The pretext data are the BiSSL config's ``pretext_dataloader`` (its batch size, workers,
    augmentation) with the dataset replaced by the mix of its images and the downstream training
    images of ``train_dataloader``. Nothing downstream is trained, so there is no validation
    (``val_interval`` is accepted for configs that inherit BiSSL's and not used).

    Args:
        warmup_steps: linear warm-up steps; 0 (default): cosine decay from the first step.
        **kwargs: those of :class:`~bissl_dense.baselines.single_level.SingleLevelLoop`.
    """

    name = "data_mix"
    uses_downstream = False
    validates = False

    def __init__(
        self, runner: Any, dataloader: Any, warmup_steps: int | None = 0, **kwargs: Any
    ) -> None:
        super().__init__(runner, dataloader, warmup_steps=warmup_steps, **kwargs)

    def default_steps(self) -> int:
        return self.alternations * self.lower_steps  # BiSSL's pretext updates, T·N_L

    def pretext_loader(
        self, cfg: Mapping[str, Any] | None, downstream: Any
    ) -> tuple[Any, dict[str, Any]]:
        if cfg is None or "dataset" not in cfg:
            raise DataError("DataMixLoop needs pretext_dataloader.dataset (the pretext images)")
        mixed = MixedPretextDataset(cfg["dataset"], downstream)
        self.mixed = mixed
        return _loader_options(dict(cfg, dataset=mixed), "pretext_dataloader")

    def compute_gradients(
        self, model: BiSSLModel, pretext_batch: Any, downstream_batch: Any
    ) -> Mapping[str, float]:
        loss = pretext_lower_loss(model.lower, next(model.parameters()).device)(pretext_batch)
        loss.backward()
        return {"data_mix/pretext_loss": float(loss.detach())}

"""A training loop that counts steps and resumes mid-epoch without replaying data.

mmengine's ``EpochBasedTrainLoop`` restarts a resumed epoch from its first batch (so a run killed
mid-epoch ends with a different step count), and ``IterBasedTrainLoop`` skips already-seen
batches by loading them, which takes hours late into an ImageNet run. This loop is step-based
(``max_iters``, or ``max_epochs`` converted with the dataloader length) and, on resume, positions
a :class:`~bissl_dense.engine.datasets.SeededSampler` at the exact draw where the interrupted run
stopped, so data order and augmentations match an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mmengine.registry import LOOPS
from mmengine.runner.base_loop import BaseLoop
from torch.utils.data import DataLoader

from bissl_dense.engine.datasets import SeededSampler


@LOOPS.register_module()
class ResumableTrainLoop(BaseLoop):
    """Train for ``max_iters`` steps (or ``max_epochs`` full epochs), epoch by epoch.

    Args:
        runner: The mmengine runner.
        dataloader: A dataloader or its config; its sampler should be a ``SeededSampler`` for
            exact mid-epoch resume (any sampler works, but then a resumed epoch restarts).
        max_iters: Total optimizer steps. Exactly one of ``max_iters`` / ``max_epochs``.
        max_epochs: Total epochs; ``max_iters = max_epochs * len(dataloader)``.
        val_interval: run the validation loop (when the config has one) after every
            ``val_interval`` completed epochs and after the last step; 0 never validates.
            Fine-tuning validates after every epoch to keep the best one (SPEC §4).
    """

    def __init__(
        self,
        runner: Any,
        dataloader: DataLoader | dict,
        max_iters: int | None = None,
        max_epochs: int | None = None,
        val_interval: int = 0,
    ) -> None:
        super().__init__(runner, dataloader)
        if int(val_interval) < 0:
            raise ValueError(f"train_cfg.val_interval must be >= 0, got {val_interval}")
        self.val_interval = int(val_interval)
        if (max_iters is None) == (max_epochs is None):
            raise ValueError(
                "train_cfg needs exactly one of max_iters and max_epochs, got "
                f"max_iters={max_iters}, max_epochs={max_epochs}"
            )
        self.iters_per_epoch = len(self.dataloader)
        if self.iters_per_epoch == 0:
            raise ValueError(
                "the training dataloader yields no batch per epoch: the dataset has "
                f"{len(self.dataloader.dataset)} images, fewer than batch_size="
                f"{self.dataloader.batch_size} per process (drop_last); use more images or a "
                "smaller train_dataloader.batch_size"
            )
        if max_epochs is not None:
            max_iters = int(max_epochs) * self.iters_per_epoch
        assert max_iters is not None
        if int(max_iters) <= 0:
            raise ValueError(f"train_cfg.max_iters must be positive, got {max_iters}")
        self._max_iters = int(max_iters)
        self._max_epochs = math.ceil(self._max_iters / self.iters_per_epoch)
        self._epoch = 0
        self._iter = 0
        self.stop_training = False  # set by e.g. EarlyStoppingHook

    @property
    def max_epochs(self) -> int:
        return self._max_epochs

    @property
    def max_iters(self) -> int:
        return self._max_iters

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def iter(self) -> int:
        return self._iter

    def _position_sampler(self, epoch: int, batches_done: int) -> None:
        sampler = self.dataloader.sampler
        if isinstance(sampler, SeededSampler):
            # A resumed run may have been started with another random seed; the data order is
            # defined by the seed the run (and its checkpoint meta) uses.
            sampler.seed = int(self.runner.seed)
            sampler.set_epoch(epoch)
            sampler.set_start(batches_done * int(self.dataloader.batch_size))
            return
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def run(self) -> Any:
        self.runner.call_hook("before_train")
        while self._iter < self._max_iters and not self.stop_training:
            self._epoch, batches_done = divmod(self._iter, self.iters_per_epoch)
            self._position_sampler(self._epoch, batches_done)
            self.runner.call_hook("before_train_epoch")
            self.runner.model.train()
            for data_batch in self.dataloader:
                self.run_iter(data_batch)
                if self._iter >= self._max_iters or self.stop_training:
                    break
            self.runner.call_hook("after_train_epoch")
            if self._iter % self.iters_per_epoch == 0:
                self._epoch = self._iter // self.iters_per_epoch
            if self._should_validate():
                self.runner.val_loop.run()
        self.runner.call_hook("after_train")
        return self.runner.model

    def _should_validate(self) -> bool:
        if not self.val_interval or self.runner.val_loop is None:
            return False
        epoch_done = self._iter % self.iters_per_epoch == 0
        finished = self._iter >= self._max_iters
        epoch = self._iter // self.iters_per_epoch
        return finished or (epoch_done and epoch % self.val_interval == 0)

    def run_iter(self, data_batch: Sequence[dict] | dict) -> None:
        self.runner.call_hook("before_train_iter", batch_idx=self._iter, data_batch=data_batch)
        outputs = self.runner.model.train_step(data_batch, optim_wrapper=self.runner.optim_wrapper)
        self.runner.call_hook(
            "after_train_iter", batch_idx=self._iter, data_batch=data_batch, outputs=outputs
        )
        self._iter += 1

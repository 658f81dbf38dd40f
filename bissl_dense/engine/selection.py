"""Checkpoint selection on the validation metric, then the test metric of that checkpoint.

SPEC §4 ("checkpoint selection"): fine-tuning keeps the epoch with the best validation score
(top-1, or the 11-point mAP for VOC2007), and the reported number is the test score of that
checkpoint. :class:`BestCheckpointHook` keeps the best weights in ``<work_dir>/best.pth``
(tensors only, written atomically, replaced only by a complete file) and, after training, runs
the test loop on them and writes ``<work_dir>/results.json``, the file the experiments runner
reads. The best score so far lives in the message hub, so a resumed run keeps comparing against
it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from mmengine.dist import broadcast_object_list, is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from bissl_dense.engine.hooks import unwrap_model
from bissl_dense.fileio import atomic_torch_save, atomic_write_text

__all__ = ["BestCheckpointHook", "read_results"]

RESULTS_FILE = "results.json"
BEST_FILE = "best.pth"


def read_results(work_dir: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a finished run (raises FileNotFoundError naming the path)."""
    path = Path(work_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no results file '{path}': the run has not finished")
    return json.loads(path.read_text())


@HOOKS.register_module()
class BestCheckpointHook(Hook):
    """Keep the weights of the best validation score; test them after training.

    Args:
        metric: key of the validation metrics to select on (e.g. ``classification/top1``).
        rule: ``"greater"`` or ``"less"``.
        test_after_train: run the test loop on the best weights and write ``results.json``.
    """

    priority = "LOW"  # after the logger has seen the validation metrics

    def __init__(self, metric: str, rule: str = "greater", test_after_train: bool = True) -> None:
        if rule not in ("greater", "less"):
            raise ValueError(f"rule must be 'greater' or 'less', got {rule!r}")
        self.metric = metric
        self.rule = rule
        self.test_after_train = test_after_train

    def _better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.rule == "greater" else value < best

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        if not metrics:
            return
        if self.metric not in metrics:
            raise KeyError(
                f"BestCheckpointHook: the validation metrics have no '{self.metric}'; "
                f"they have {sorted(metrics)}"
            )
        value = float(metrics[self.metric])
        hub = runner.message_hub
        best = hub.get_info("best_score")
        if math.isnan(value) or not self._better(value, best):
            return
        hub.update_info("best_score", value)
        hub.update_info("best_epoch", int(runner.epoch))
        hub.update_info("best_iter", int(runner.iter))
        if is_main_process():
            state = {
                k: v.detach().cpu() for k, v in unwrap_model(runner.model).state_dict().items()
            }
            atomic_torch_save({"state_dict": state}, Path(runner.work_dir) / BEST_FILE)
            runner.logger.info(
                f"best {self.metric} = {value:.4f} (epoch {runner.epoch}, iteration "
                f"{runner.iter}); weights in {Path(runner.work_dir) / BEST_FILE}"
            )

    def after_train(self, runner: Any) -> None:
        if not self.test_after_train:
            return
        best_path = Path(runner.work_dir) / BEST_FILE
        exists = [best_path.is_file()]
        broadcast_object_list(exists)
        if not exists[0]:
            raise FileNotFoundError(
                f"no '{best_path}': the run never validated (set train_cfg.val_interval)"
            )
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        unwrap_model(runner.model).load_state_dict(state)
        test_metrics = runner.test_loop.run()
        if is_main_process():
            hub = runner.message_hub
            results = {
                "selection_metric": self.metric,
                "best_val": hub.get_info("best_score"),
                "best_epoch": hub.get_info("best_epoch"),
                "best_iter": hub.get_info("best_iter"),
                "test": {k: float(v) for k, v in test_metrics.items()},
                "checkpoint": str(best_path),
            }
            atomic_write_text(
                Path(runner.work_dir) / RESULTS_FILE, json.dumps(results, indent=2) + "\n"
            )
            runner.logger.info(f"test metrics of the best checkpoint: {results['test']}")

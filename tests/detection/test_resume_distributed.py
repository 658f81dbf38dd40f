"""A two-process (gloo) detectron2 BiSSL run stopped inside an upper stage and resumed from the
checkpoint the main process wrote ends at the uninterrupted two-process run's weights, bit for bit
(issue 21: every rank used to resume with the main process's Hessian batch and random state)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.detection._d2 import require_detectron2, tiny_cfg, write_voc_data

require_detectron2()

from detectron2.engine import HookBase, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from bissl_dense.detection.trainer import BiSSLTrainer  # noqa: E402

# 2 alternations of 1 lower and 2 upper steps; a checkpoint every 2 iterations, so the one after
# iteration 1 lies inside the first upper stage
OPTS = ["BISSL.STAGE", "bissl", "BISSL.PRETEXT.HEAD", "random", "BISSL.SEED", "0"]
OPTS += ["BISSL.ALTERNATIONS", "2", "BISSL.UPPER_STEPS", "2", "DATASETS.TEST", "()"]
OPTS += ["SOLVER.IMS_PER_BATCH", "4", "BISSL.LOWER_IMS_PER_BATCH", "8"]
OPTS += ["SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.MAX_TO_KEEP", "0"]


class _Stop(HookBase):
    """Stops training after iteration ``at`` (after its checkpoint), on every process."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self) -> None:
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt("stopped")


def _worker(voc: str, out: str) -> None:
    torch.set_num_threads(1)
    straight = BiSSLTrainer(tiny_cfg(Path(voc), Path(out) / "straight", *OPTS))
    straight.train()
    stopped = BiSSLTrainer(tiny_cfg(Path(voc), Path(out) / "stopped", *OPTS))
    stopped.register_hooks([_Stop(at=1)])
    try:
        stopped.train()
    except KeyboardInterrupt:
        pass
    comm.synchronize()  # the main process has written the checkpoint of iteration 1
    resumed = BiSSLTrainer(tiny_cfg(Path(voc), Path(out) / "stopped", *OPTS))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2 and resumed.bilevel.hessian_batch is not None
    resumed.train()
    rank = comm.get_rank()
    for name, trainer in (("straight", straight), ("resumed", resumed)):
        state = {"model": trainer.model.state_dict(), "pretext": trainer.pretext.state_dict()}
        torch.save(state, Path(out) / f"{name}_rank{rank}.pt")


def test_two_processes_resume_inside_an_upper_stage_exactly(tmp_path: Path) -> None:
    voc = write_voc_data(tmp_path / "voc", n=16, size=64)
    launch(_worker, 2, dist_url="auto", args=(str(voc), str(tmp_path)))
    for rank in range(2):
        straight = torch.load(tmp_path / f"straight_rank{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resumed_rank{rank}.pt", weights_only=True)
        for part in ("model", "pretext"):
            assert straight[part].keys() == resumed[part].keys()
            for key, value in straight[part].items():
                assert torch.equal(resumed[part][key], value), (rank, part, key)

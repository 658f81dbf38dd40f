"""Where the detectron2 BiSSL stage starts, through the real commands (issue 21, items 2 and 4).

The published pipeline on generated VOC data: pretext files (backbone, head) → ``bissl export
--to detectron2`` → head warm-up (``tools/train_net.py``, ``BISSL.STAGE warmup``) → BiSSL
(``tools/train_net.py``, ``BISSL.STAGE bissl``). At the first BiSSL step both levels' backbones
(θ_L in the pretext model; θ_U in the detector, res5 = ``roi_heads.res5`` included) equal the
pretext backbone file bit for bit, the task head (RPN, box predictor, extra norm after res5)
equals the warmed-up checkpoint, and the pretext head equals its file (BYOL: target = online).

The warm-up trains the extra norm after res5 with the RPN and the box predictor (it belongs to
the downstream head, not to the pretext backbone), in train mode as BiSSL does, while the
backbone and res5 stay exactly the pretext file's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from tests.detection._d2 import TINY_CONFIG, require_detectron2, write_voc_data

require_detectron2()

from detectron2.engine import HookBase  # noqa: E402

from bissl_dense.core import BilevelStep  # noqa: E402
from bissl_dense.detection import train_net  # noqa: E402
from bissl_dense.detection.correspondence import convert_state, torchvision_name  # noqa: E402
from bissl_dense.detection.trainer import BiSSLTrainer, FinetuneTrainer  # noqa: E402

NORM = "roi_heads.res5.norm"
# what the figures of the closing note are read from (pytest -s prints them)
DIFFS: dict[str, dict[str, float]] = {}


def _perturbed(state: Mapping[str, Tensor], seed: int) -> dict[str, Tensor]:
    """``state`` with every float tensor moved off its initial value (BatchNorm statistics
    included), so that a re-initialisation or a missed load cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value + 7  # num_batches_tracked
        elif key.endswith("running_var"):
            out[key] = value * (0.5 + torch.rand(value.shape, generator=gen))
        else:
            out[key] = value + 0.05 * torch.randn(value.shape, generator=gen)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated VOC, the pretext files in the published format, their detectron2 export and a
    2-iteration head warm-up through ``tools/train_net.py``."""
    from bissl_dense.cli import main as bissl_cli
    from bissl_dense.pretext.methods.byol import BYOL
    from bissl_dense.pretext.weights import export_pretext

    root = tmp_path_factory.mktemp("start")
    voc = write_voc_data(root / "voc", n=8, size=64)
    torch.manual_seed(11)
    byol = BYOL(backbone={"arch": "resnet50"})
    backbone = _perturbed(byol.backbone.state_dict(), 1)
    head = _perturbed(byol.head_state_dict(), 2)  # projector and predictor
    paths = export_pretext(
        root / "pretext", backbone, head, {"method": "test"}, "byol", "resnet50", "0"
    )
    pkl = root / "pretext_backbone_detectron2.pkl"
    assert (
        bissl_cli(["export", str(paths["backbone"]), "--to", "detectron2", "--out", str(pkl)]) == 0
    )

    warmup = root / "warmup"
    seen: dict[str, Any] = {"train_mode": [], "requires_grad": []}

    class Watch(HookBase):
        def after_step(self) -> None:
            norm = self.trainer.model.get_submodule(NORM)
            seen["train_mode"].append(norm.training)
            seen["requires_grad"].append(all(p.requires_grad for p in norm.parameters()))

    build_hooks = FinetuneTrainer.build_hooks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FinetuneTrainer, "build_hooks", lambda self: [*build_hooks(self), Watch()])
        argv = ["--config-file", str(TINY_CONFIG), "--num-gpus", "1", "BISSL.STAGE", "warmup"]
        argv += ["MODEL.WEIGHTS", str(pkl), "MODEL.ROI_HEADS.FREEZE_RES5", "True"]
        argv += ["DATASETS.VOC_ROOT", str(voc), "OUTPUT_DIR", str(warmup), "DATASETS.TEST", "()"]
        argv += ["SOLVER.MAX_ITER", "2", "SOLVER.BASE_LR", "0.05"]
        assert train_net.main(argv) == 0
    return {
        "voc": voc,
        "backbone": paths["backbone"],
        "head": paths["head"],
        "warmed": warmup / "model_final.pth",
        "warmup_seen": seen,  # type: ignore[dict-item]
    }


def _load(path: Path) -> dict[str, Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _max_diff(got: Mapping[str, Tensor], expected: Mapping[str, Tensor], what: str) -> float:
    assert set(got) == set(expected), (what, sorted(set(got) ^ set(expected))[:6])
    worst = 0.0
    for key, value in expected.items():
        assert got[key].shape == value.shape, (what, key)
        worst = max(worst, float((got[key].double() - value.double()).abs().max()))
    return worst


def test_warmup_trains_the_extra_norm_and_leaves_backbone_and_res5(files: dict[str, Any]) -> None:
    """Issue 21 item 4: the extra norm after res5 is part of the warmed-up head."""
    seen = files["warmup_seen"]
    assert seen["train_mode"] == [True, True] and seen["requires_grad"] == [True, True]
    final = _load(files["warmed"])["model"]
    pretext = _load(files["backbone"])
    # backbone and res5 (parameters, statistics, counters) are the pretext file's, bit for bit
    shared = {k: v for k, v in final.items() if torchvision_name(k) is not None}
    assert _max_diff(convert_state(shared, "torchvision"), pretext, "warm-up backbone") == 0.0
    for key, value in convert_state(shared, "torchvision").items():
        assert torch.equal(value, pretext[key]), key
    # the extra norm was trained: affine parameters and running statistics moved off identity
    assert not torch.equal(final[f"{NORM}.weight"], torch.ones_like(final[f"{NORM}.weight"]))
    assert not torch.equal(final[f"{NORM}.bias"], torch.zeros_like(final[f"{NORM}.bias"]))
    mean, var = final[f"{NORM}.running_mean"], final[f"{NORM}.running_var"]
    assert not torch.equal(mean, torch.zeros_like(mean))
    assert not torch.equal(var, torch.ones_like(var))
    assert int(final[f"{NORM}.num_batches_tracked"]) == 2
    # with the RPN and the box predictor (detectron2's initialisation, seeded as the trainer does)
    from detectron2.modeling import build_model

    from bissl_dense.detection.config import load_config

    torch.manual_seed(0)
    initial = build_model(load_config(str(TINY_CONFIG), ["MODEL.WEIGHTS", "random"])).state_dict()
    for key in (
        "roi_heads.box_predictor.cls_score.weight",
        "proposal_generator.rpn_head.conv.weight",
    ):
        assert not torch.equal(final[key], initial[key]), key


class _Stop(Exception):
    """Ends the BiSSL run once the first upper step has been seen."""


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_bissl_starts_from_the_pretext_files_and_the_warmed_up_head(
    files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Issue 21, "start state", detectron2 C4, through ``tools/train_net.py``.

    SimCLR as the published config runs it (``BISSL.PRETEXT.BACKBONE`` empty: θ_L starts from the
    detector's backbone and res5); BYOL with the backbone file named explicitly.
    """
    captured: dict[str, Any] = {}

    class Capture(HookBase):
        def before_step(self) -> None:
            if self.trainer.iter == 0:
                trainer = self.trainer
                captured["lower"] = _clone(trainer.pretext.backbone.state_dict())
                captured["pretext_head"] = _clone(trainer.pretext.head_state_dict())
                captured["upper"] = _clone(trainer.model.state_dict())
                if method == "byol":
                    captured["target"] = [
                        (_clone(a.state_dict()), _clone(b.state_dict()))
                        for a, b in trainer.pretext.online_target_pairs()
                    ]

    def first_upper_step(self: BilevelStep, batch: Any, hessian_batch: Any) -> Any:
        norm = self.upper_model.get_submodule(NORM)
        captured["norm_training"] = norm.training
        captured["norm"] = _clone(norm.state_dict())
        captured["upper_at_upper_step"] = _clone(self.upper_model.state_dict())
        raise _Stop

    build_hooks = BiSSLTrainer.build_hooks
    monkeypatch.setattr(BiSSLTrainer, "build_hooks", lambda self: [Capture(), *build_hooks(self)])
    monkeypatch.setattr(BilevelStep, "upper_step", first_upper_step)
    argv = ["--config-file", str(TINY_CONFIG), "--num-gpus", "1", "BISSL.STAGE", "bissl"]
    argv += ["MODEL.WEIGHTS", str(files["warmed"]), "DATASETS.VOC_ROOT", str(files["voc"])]
    argv += ["OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "()"]
    argv += ["BISSL.PRETEXT.METHOD", method, "BISSL.PRETEXT.HEAD", str(files["head"])]
    if method == "byol":
        argv += ["BISSL.PRETEXT.BACKBONE", str(files["backbone"])]
    with pytest.raises(_Stop):
        train_net.main(argv)

    pretext_file = _load(files["backbone"])
    warmed = _load(files["warmed"])["model"]
    upper = captured["upper"]
    head_keys = [k for k in upper if torchvision_name(k) is None]
    assert any(k.startswith(NORM) for k in head_keys) and any("rpn" in k for k in head_keys)
    head_file = _load(files["head"])
    expected_head = {k: v for k, v in head_file.items() if k.split(".")[0] in _head_parts(method)}
    upper_backbone = convert_state(
        {k: v for k, v in upper.items() if torchvision_name(k) is not None}, "torchvision"
    )
    diffs = {
        "theta_L (pretext model) vs pretext backbone file": _max_diff(
            captured["lower"], pretext_file, "theta_L"
        ),
        "theta_U (detector backbone + res5) vs pretext backbone file": _max_diff(
            upper_backbone, pretext_file, "theta_U"
        ),
        "task head (RPN, box predictor, extra norm) vs warm-up model_final": _max_diff(
            {k: upper[k] for k in head_keys}, {k: warmed[k] for k in head_keys}, "task head"
        ),
        "pretext head vs head file": _max_diff(
            captured["pretext_head"], expected_head, "pretext head"
        ),
    }
    if method == "byol":
        diffs["BYOL target vs online"] = max(
            _max_diff(target, online, "BYOL target") for online, target in captured["target"]
        )
    DIFFS[method] = diffs
    print(f"\n[start state, detectron2 C4, {method}] max |diff|: {diffs}")
    assert all(v == 0.0 for v in diffs.values()), diffs
    # counters (num_batches_tracked) and every other tensor: bit for bit, not only within 0
    for key, value in pretext_file.items():
        assert torch.equal(captured["lower"][key], value) and torch.equal(
            upper_backbone[key], value
        )
    for key in head_keys:
        assert torch.equal(upper[key], warmed[key]), key

    # the first upper step sees the extra norm as the warm-up ended: train mode, its values (the
    # lower step before it does not touch the detector)
    assert captured["norm_training"] is True
    assert files["warmup_seen"]["train_mode"][-1] is True  # the mode the warm-up trained it in
    for key, value in captured["norm"].items():
        assert torch.equal(value, warmed[f"{NORM}.{key}"]), key
    for key, value in captured["upper_at_upper_step"].items():
        assert torch.equal(value, upper[key]), key


def _head_parts(method: str) -> tuple[str, ...]:
    return ("projector", "predictor") if method == "byol" else ("projector",)


def _clone(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}

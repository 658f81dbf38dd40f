"""The weighted-sum baseline (SPEC §6, App. B.9.4): its gradient, its stage and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

import classification  # noqa: F401  (registers ImageClassificationTask)
from bissl_dense.baselines.weighted_sum import WeightedSumLoop, check_w, weighted_sum_backward
from bissl_dense.datasets.synthetic import write_imagefolder, write_unlabeled
from bissl_dense.engine.bissl_loop import BiSSLModel
from bissl_dense.errors import ConfigError
from bissl_dense.experiments.stages import run_stage
from bissl_dense.pretext.methods import SimCLR
from bissl_dense.pretext.weights import export_pretext, load_backbone_state

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "classification" / "weighted_sum_simclr_resnet18_synthetic.py"


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_gradient_is_the_weighted_sum_by_hand(w: float) -> None:
    """Linear backbone W, squared losses: (1−w)·(Wx₁−y)x₁ᵀ + w·(hᵀWx₂−t)·h x₂ᵀ in closed form,
    the downstream term through the substituted backbone as the loop computes it."""
    torch.manual_seed(0)
    backbone = nn.Linear(3, 2, bias=False)
    head = nn.Linear(2, 1, bias=False)
    upper = nn.Sequential(nn.Linear(3, 2, bias=False), head)  # its own copy of the backbone
    x1, y, x2, t = torch.randn(3), torch.randn(2), torch.randn(3), torch.randn(1)

    def pretext_loss() -> torch.Tensor:
        return 0.5 * ((backbone.weight @ x1 - y) ** 2).sum()

    def downstream_loss() -> torch.Tensor:
        out = functional_call(upper, {"0.weight": backbone.weight}, (x2,))
        return 0.5 * ((out - t) ** 2).sum()

    losses = weighted_sum_backward(pretext_loss, downstream_loss, w)
    W, h = backbone.weight.detach(), head.weight.detach()[0]
    residual_p = W @ x1 - y
    residual_d = h @ (W @ x2) - t
    expected_w = (1 - w) * torch.outer(residual_p, x1) + w * residual_d * torch.outer(h, x2)
    assert torch.allclose(backbone.weight.grad, expected_w, atol=1e-6)
    if w == 0.0:
        assert head.weight.grad is None and set(losses) == {"pretext_loss"}
    else:
        assert torch.allclose(head.weight.grad[0], w * residual_d * (W @ x2), atol=1e-6)
    assert upper[0].weight.grad is None  # θ_U is not the trained backbone
    if w == 1.0:
        assert set(losses) == {"downstream_loss"}


def test_loop_gradient_on_the_bissl_model_matches_separate_passes() -> None:
    """WeightedSumLoop.compute_gradients on a ResNet-18 BiSSLModel: the backbone gradient is
    (1−w)·∇L_P + w·∇L_D with each term differentiated on its own (L_D through the classifier's
    own backbone, which starts equal to θ_L), the heads get their own scaled terms."""
    torch.manual_seed(0)
    model = BiSSLModel(
        pretext=dict(type="SimCLR", backbone=dict(arch="resnet18")),
        task=dict(type="ImageClassificationTask", num_classes=3, backbone=dict(arch="resnet18")),
    ).double()  # float64: the two computations agree to rounding, elementwise
    model.train()
    views = {"inputs": [torch.randn(4, 3, 16, 16).double(), torch.randn(4, 3, 16, 16).double()]}
    labelled = (torch.randn(4, 3, 16, 16).double(), torch.tensor([0, 1, 2, 1]))
    w = 0.3
    loop = WeightedSumLoop.__new__(WeightedSumLoop)
    loop.w = w
    logged = loop.compute_gradients(model, views, labelled)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    model.lower.pretext_loss(*views["inputs"]).backward()
    grad_p = {n: p.grad.clone() for n, p in model.lower.named_parameters()}
    model.upper.loss_of(model.upper(labelled[0]), labelled[1]).backward()
    grad_d = {n: p.grad.clone() for n, p in model.upper.named_parameters()}
    corr = model.task.correspondence
    for name in dict(model.lower.backbone.named_parameters()):
        expected = (1 - w) * grad_p[f"backbone.{name}"] + w * grad_d[corr[name]]
        assert torch.allclose(got[f"lower.backbone.{name}"], expected, rtol=1e-9, atol=1e-9), name
    for name in ("weight", "bias"):
        assert torch.allclose(got[f"upper.head.{name}"], w * grad_d[f"head.{name}"], atol=1e-9)
    projector = [n for n in grad_p if not n.startswith("backbone.")]
    assert projector and all(
        torch.allclose(got[f"lower.{n}"], (1 - w) * grad_p[n], atol=1e-9) for n in projector
    )
    assert not any(k.startswith("upper.backbone.") for k in got)  # θ_U takes no gradient
    assert set(logged) == {
        "weighted_sum/pretext_loss",
        "weighted_sum/downstream_loss",
        "weighted_sum/w",
    }


def test_w_is_checked() -> None:
    assert check_w("0.25") == 0.25
    for bad in ("x", 1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="train_cfg.w"):
            check_w(bad)


@pytest.fixture(scope="module")
def stage_options(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("weighted_sum")
    write_imagefolder(root / "labelled", 20, num_classes=4, size=16, seed=0)
    write_unlabeled(root / "unlabeled", 8, size=16, seed=0)
    torch.manual_seed(0)
    model = SimCLR(backbone=dict(arch="resnet18"))
    files = export_pretext(
        root / "pretext", model.backbone, model.head_state_dict(), {}, "simclr", "resnet18", "t"
    )
    options: dict[str, object] = {
        "pretext_dataloader.dataset.data_root": str(root / "unlabeled"),
        "pretext_dataloader.dataset.augmentation.image_size": 16,
        "pretext_dataloader.num_workers": 0,
        "pretext_dataloader.batch_size": 4,
        "train_dataloader.batch_size": 4,
        "train_cfg.val_interval": 0,
        "train_cfg.w": 0.4,
        "train_cfg.bissl.alternations": 1,
        "train_cfg.bissl.upper_steps": 2,
        "train_cfg.bissl.lower_steps": 1,
        "default_hooks.checkpoint.interval": 1,
        "default_hooks.checkpoint.max_keep_ckpts": 5,
        "model.pretext.backbone_checkpoint": str(files["backbone"]),
        "model.pretext.head_checkpoint": str(files["head"]),
    }
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        options[f"{loader}.dataset.data_root"] = str(root / "labelled")
        options[f"{loader}.dataset.image_size"] = 16
        options[f"{loader}.num_workers"] = 0
        if loader != "train_dataloader":
            options[f"{loader}.persistent_workers"] = False
    return {"root": root, "options": options, "pretext": files}


def test_stage_runs_t_times_nu_steps_exports_and_resumes_exactly(stage_options: dict) -> None:
    """T·N_U = 2 steps from the BiSSL config; a run resumed from its step-1 checkpoint ends
    with the same backbone, bit for bit, as the uninterrupted one."""
    root: Path = stage_options["root"]
    options = stage_options["options"]
    whole = run_stage(CONFIG, root / "whole", options)
    exported = whole / "export" / "weighted_sum_backbone.pth"
    config = json.loads((whole / "export" / "weighted_sum_config.json").read_text())
    assert config["steps"] == 2 and config["train_cfg"]["w"] == 0.4
    final = load_backbone_state(exported)
    start = load_backbone_state(stage_options["pretext"]["backbone"])
    assert any(not torch.equal(final[k], start[k]) for k in start)

    # the same run killed after step 1: only its step-1 checkpoint survives
    resumed = root / "resumed"
    resumed.mkdir()
    (resumed / "iter_1.pth").write_bytes((whole / "iter_1.pth").read_bytes())
    (resumed / "last_checkpoint").write_text(str(resumed / "iter_1.pth"))
    run_stage(CONFIG, resumed, options)
    again = load_backbone_state(resumed / "export" / "weighted_sum_backbone.pth")
    assert all(torch.equal(final[k], again[k]) for k in final)

"""SimCLR / BYOL methods: losses against explicit references, BYOL's EMA target, freezing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bissl_dense.pretext.methods import BYOL, SimCLR, target_momentum

SMALL = dict(backbone=dict(arch="resnet18"), projector=dict(hidden_dim=32, out_dim=16))


def _views(batch: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)


def _reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent by explicit loops over anchors (SimCLR paper, eq. 1)."""
    z = torch.cat([F.normalize(z1, dim=1), F.normalize(z2, dim=1)])
    n = z1.shape[0]
    total = torch.zeros(())
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = torch.exp(z[i] @ z[positive] / temperature)
        denominator = sum(torch.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i)
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


def _reference_byol(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    rows = [2 - 2 * torch.dot(p[i], z[i]) / (p[i].norm() * z[i].norm()) for i in range(len(p))]
    return torch.stack(rows).mean()


def test_simclr_loss_matches_explicit_nt_xent() -> None:
    model = SimCLR(temperature=0.5, **SMALL).train()
    v1, v2 = _views()
    loss = model.pretext_loss(v1, v2)
    # Reference on the same projections (BatchNorm in train mode: recompute identically).
    z1 = model.projector(model.backbone(v1))
    z2 = model.projector(model.backbone(v2))
    torch.testing.assert_close(loss, _reference_nt_xent(z1, z2, 0.5), rtol=1e-5, atol=1e-6)
    out = model(inputs=[v1, v2], mode="loss")
    assert set(out) == {"loss"}
    torch.testing.assert_close(out["loss"], loss, rtol=1e-5, atol=1e-6)
    # A (2, B, C, H, W) tensor is accepted too.
    torch.testing.assert_close(model(torch.stack([v1, v2]))["loss"], loss, rtol=1e-5, atol=1e-6)


def test_forward_tensor_mode_and_bad_inputs() -> None:
    model = SimCLR(**SMALL).eval()
    v1, v2 = _views()
    features = model(v1, mode="tensor")
    assert features.shape == (6, 512)
    torch.testing.assert_close(features, model.backbone(v1))
    torch.testing.assert_close(model([v1, v2], mode="tensor"), features)
    with pytest.raises(ValueError, match="mode must be"):
        model([v1, v2], mode="predict")
    with pytest.raises(ValueError, match="two views"):
        model([v1, v2, v1], mode="loss")
    with pytest.raises(ValueError, match="temperature"):
        SimCLR(temperature=0.0, **SMALL)


def test_pretext_loss_with_swapped_backbone_parameters() -> None:
    """The BiSSL lower level evaluates L_P with other backbone parameters substituted."""
    model = SimCLR(**SMALL).train()
    other = SimCLR(**SMALL).train()
    other.projector.load_state_dict(model.projector.state_dict())
    v1, v2 = _views()
    swapped = {f"backbone.{k}": v for k, v in other.backbone.state_dict().items()}
    loss_swapped = functional_call(model, swapped, args=([v1, v2],), kwargs={"mode": "loss"})
    torch.testing.assert_close(
        loss_swapped["loss"], other.pretext_loss(v1, v2), rtol=1e-5, atol=1e-6
    )


def test_simclr_loss_is_twice_differentiable() -> None:
    """Hessian-vector products of L_P w.r.t. the backbone (SPEC §2) must exist and be finite."""
    model = SimCLR(**SMALL).train()
    v1, v2 = _views(batch=4)
    params = [p for p in model.backbone.parameters()]
    loss = model.pretext_loss(v1, v2)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vector = [torch.randn_like(p) for p in params]
    hvp = torch.autograd.grad(grads, params, grad_outputs=vector)
    assert all(torch.isfinite(h).all() for h in hvp)
    assert any(h.abs().sum() > 0 for h in hvp)


def test_byol_loss_matches_reference_and_target_gets_no_gradient() -> None:
    model = BYOL(base_momentum=0.9, **SMALL).train()
    v1, v2 = _views()
    for online, target in model.online_target_pairs():
        for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
            assert torch.equal(p_online, p_target)  # target starts as a copy
            assert not p_target.requires_grad
    torch.manual_seed(1)
    loss = model.pretext_loss(v1, v2)
    torch.manual_seed(1)
    p1 = model.predictor(model.projector(model.backbone(v1)))
    p2 = model.predictor(model.projector(model.backbone(v2)))
    with torch.no_grad():
        t1 = model.target_projector(model.target_backbone(v1))
        t2 = model.target_projector(model.target_backbone(v2))
    expected = _reference_byol(p1, t2) + _reference_byol(p2, t1)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)

    loss.backward()
    for module in model.target_modules():
        assert all(p.grad is None for p in module.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_byol_target_follows_ema_formula(schedule: str) -> None:
    model = BYOL(base_momentum=0.8, momentum_schedule=schedule, **SMALL).train()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9
    )
    online_modules = [model.backbone, model.projector]
    expected = [p.detach().clone() for m in online_modules for p in m.parameters()]
    max_steps = 4
    for step in range(3):
        v1, v2 = _views(batch=4)
        optimizer.zero_grad()
        model.pretext_loss(v1, v2).backward()
        optimizer.step()
        model.after_optimizer_step(step, max_steps)
        if schedule == "constant":
            tau = 0.8
        else:  # BYOL paper: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2
            tau = 1 - 0.2 * (math.cos(math.pi * step / max_steps) + 1) / 2
        online = [p.detach() for m in online_modules for p in m.parameters()]
        expected = [tau * e + (1 - tau) * o for e, o in zip(expected, online, strict=True)]
    target = [p for m in (model.target_backbone, model.target_projector) for p in m.parameters()]
    assert len(target) == len(expected)
    for got, want in zip(target, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # The online network has moved away from the target (the test would notice a copy).
    assert not torch.allclose(model.projector[0].weight, model.target_projector[0].weight)


def test_cosine_momentum_schedule_values() -> None:
    assert target_momentum(0.99, 0, 100, "cosine") == pytest.approx(0.99)
    assert target_momentum(0.99, 50, 100, "cosine") == pytest.approx(0.995)
    assert target_momentum(0.99, 100, 100, "cosine") == pytest.approx(1.0)
    # cos(pi / 4) = 0.7071067811865476: 1 - 0.01 * 1.7071067811865476 / 2
    assert target_momentum(0.99, 25, 100, "cosine") == pytest.approx(0.99146446609, abs=1e-10)
    assert target_momentum(0.9995, 77, 100, "constant") == 0.9995
    with pytest.raises(ValueError, match="momentum_schedule"):
        target_momentum(0.99, 1, 10, "linear")
    with pytest.raises(ValueError, match="momentum_schedule"):
        BYOL(momentum_schedule="linear", **SMALL)


@pytest.mark.parametrize("method", [SimCLR, BYOL])
def test_frozen_backbone_trains_only_the_head(method: type) -> None:
    model = method(freeze_backbone=True, **SMALL).train()
    assert not model.backbone.training  # BatchNorm statistics stay fixed
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    v1, v2 = _views()
    model.pretext_loss(v1, v2).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.projector.parameters())
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    if method is BYOL:
        assert model.target_backbone is None  # the frozen backbone serves both branches
        model.after_optimizer_step(0, 10)


def test_head_state_dict_round_trip() -> None:
    model = BYOL(**SMALL)
    state = model.head_state_dict()
    assert {k.split(".")[0] for k in state} == {"projector", "predictor"}
    assert state["projector.0.weight"].shape == (32, 512)
    fresh = BYOL(**SMALL)
    fresh.load_head_state_dict(state)
    for key, value in fresh.head_state_dict().items():
        assert torch.equal(value, state[key])
    simclr = SimCLR(**SMALL)
    assert {k.split(".")[0] for k in simclr.head_state_dict()} == {"projector"}
    with pytest.raises(KeyError, match="predictor"):
        fresh.load_head_state_dict(simclr.head_state_dict())


def test_byol_target_is_reset_to_loaded_online_weights(tmp_path) -> None:
    """Loading a pretext head (or a backbone) into BYOL must carry over to its target network:
    a target left at random initialisation makes BiSSL's first lower steps regress onto noise."""
    from bissl_dense.pretext.methods import BYOL
    from bissl_dense.pretext.weights import export_pretext

    torch.manual_seed(0)
    source = BYOL(backbone=dict(arch="resnet18"))
    for p in source.parameters():  # move the online weights away from the initialisation
        p.data.add_(torch.randn_like(p))
    files = export_pretext(
        tmp_path, source.backbone, source.head_state_dict(), {}, "byol", "resnet18", "x"
    )
    torch.manual_seed(1)
    loaded = BYOL(
        backbone=dict(arch="resnet18"),
        backbone_checkpoint=str(files["backbone"]),
        head_checkpoint=str(files["head"]),
    )
    for online, target in loaded.online_target_pairs():
        pairs = zip(online.state_dict().items(), target.state_dict().values(), strict=True)
        for (name, a), b in pairs:
            assert torch.equal(a, b), name
    torch.testing.assert_close(
        loaded.projector.state_dict()["0.weight"], source.projector.state_dict()["0.weight"]
    )

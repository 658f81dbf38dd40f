"""BilevelStep and BilevelTrainer against dense references on a tiny float64 problem."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor
from torch.func import functional_call, hessian

from bissl_dense.core import BiSSLConfig, phase_of_step
from tests.core._tiny_bilevel import make_data, make_models, make_step, make_trainer


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_lower_step_is_pretext_plus_proximal_gradient() -> None:
    lower, upper = make_models()
    with torch.no_grad():  # make θ_L ≠ θ_U so that the proximal term matters
        for p in upper.encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    lam = 0.5
    step = make_step(lower, upper, BiSSLConfig(lam=lam, grad_clip_norm=None))
    x = make_data()[0][:8]
    before, theta_u = _snapshot(lower), _snapshot(upper)
    grads = dict(zip(before, torch.autograd.grad(lower.loss(x), list(lower.parameters()))))
    step.lower_step(x)
    for name, value in lower.named_parameters():
        expected = before[name] - grads[name]
        if name.startswith("backbone."):
            expected = expected - lam * (
                before[name] - theta_u["encoder." + name[len("backbone.") :]]
            )
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    # the upper model is untouched by a lower step
    for name, value in upper.named_parameters():
        assert torch.equal(value, theta_u[name])


def test_lower_step_can_freeze_the_pretext_head() -> None:
    lower, upper = make_models()
    step = make_step(lower, upper, BiSSLConfig(train_pretext_head=False, grad_clip_norm=None))
    head = _snapshot(lower.head)
    step.lower_step(make_data()[0][:8])
    for name, value in lower.head.named_parameters():
        assert torch.equal(value, head[name])


@pytest.mark.parametrize("discard", [False, True])
def test_upper_step_matches_dense_implicit_gradient(discard: bool) -> None:
    lower, upper = make_models()
    lower_x, upper_x, upper_y = make_data()
    with torch.no_grad():  # a lower level that has moved away from the upper one
        for p in lower.backbone.parameters():
            p.add_(0.2 * torch.randn_like(p))
    n = sum(p.numel() for p in lower.backbone.parameters())
    lam, damping = 0.05, 0.1
    cfg = BiSSLConfig(
        lam=lam,
        damping=damping,
        cg_iters=n,
        cg="global",
        grad_clip_norm=None,
        discard_implicit_jacobian=discard,
    )
    step = make_step(lower, upper, cfg)
    batch, hessian_batch = (upper_x[:8], upper_y[:8]), lower_x[:16]

    # Reference: dense Hessian of L_P on the Hessian batch w.r.t. the flattened lower backbone.
    names = [k for k, _ in lower.backbone.named_parameters()]
    shapes = [p.shape for p in lower.backbone.parameters()]
    theta_l = torch.cat([p.detach().reshape(-1) for p in lower.backbone.parameters()])

    def unflat(flat: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for name, shape in zip(names, shapes):
            k = torch.Size(shape).numel()
            out[name] = flat[i : i + k].view(shape)
            i += k
        return out

    def pretext_of(flat: Tensor) -> Tensor:  # L_P as a function of θ_L alone (φ_P fixed)
        features = functional_call(lower.backbone, unflat(flat), (hessian_batch,))
        return ((lower.head(features) - hessian_batch[:, :2].sin()) ** 2).mean()

    h = hessian(pretext_of)(theta_l)
    x, y = batch
    ce = torch.nn.functional.cross_entropy
    upper_params = dict(upper.named_parameters())
    classic = torch.autograd.grad(ce(upper(x), y), list(upper_params.values()))
    classic = dict(zip(upper_params, classic))
    substituted = {"encoder." + k: v for k, v in lower.backbone.named_parameters()}
    loss_l = ce(functional_call(upper, substituted, (x,)), y)
    head_names = [k for k in upper_params if k.startswith("classifier.")]
    g = torch.autograd.grad(
        loss_l, list(lower.backbone.parameters()) + [upper_params[k] for k in head_names]
    )
    g_lower = torch.cat([t.reshape(-1) for t in g[: len(names)]])
    ij = torch.linalg.solve(torch.eye(n) + h / (lam + damping), g_lower)
    expected_grad = {k: classic[k] for k in upper_params}
    if not discard:
        for k, v in unflat(ij).items():
            expected_grad["encoder." + k] = expected_grad["encoder." + k] + v
        for k, v in zip(head_names, g[len(names) :]):
            expected_grad[k] = expected_grad[k] + v

    before = _snapshot(upper)
    lower_before = _snapshot(lower)
    lower_buffers = [b.clone() for b in lower.buffers()]
    step.upper_step(batch, hessian_batch)
    for k, value in upper.named_parameters():
        torch.testing.assert_close(value, before[k] - expected_grad[k], rtol=1e-6, atol=1e-8)
    if not discard:  # the implicit term is not negligible, so the check above can fail
        assert (ij - g_lower).norm() > 0.05 * g_lower.norm()
        assert g_lower.norm() > 0.1 * torch.cat([classic[k].reshape(-1) for k in classic]).norm()
    for k, value in lower.named_parameters():  # θ_L and φ_P are fixed at the upper level
        assert torch.equal(value, lower_before[k])
    assert all(torch.equal(a, b) for a, b in zip(lower.buffers(), lower_buffers))


def test_gradients_are_clipped_per_level() -> None:
    lower, upper = make_models()
    cfg = BiSSLConfig(grad_clip_norm=0.01, discard_implicit_jacobian=True)
    step = make_step(lower, upper, cfg)
    lower_x, upper_x, upper_y = make_data()
    before_u, before_l = _snapshot(upper), _snapshot(lower)
    metrics = step.upper_step((upper_x[:8], upper_y[:8]), lower_x[:8])
    moved = torch.sqrt(sum(((v - before_u[k]) ** 2).sum() for k, v in upper.named_parameters()))
    assert metrics["upper/grad_norm"] > 0.01  # the raw norm is reported ...
    torch.testing.assert_close(moved, torch.tensor(0.01))  # ... and the step is clipped to it
    step.lower_step(lower_x[:8])
    moved = torch.sqrt(sum(((v - before_l[k]) ** 2).sum() for k, v in lower.named_parameters()))
    torch.testing.assert_close(moved, torch.tensor(0.01))


@pytest.mark.parametrize("hvp", ["exact", "recompute"])
def test_phases_and_hessian_batch_held_for_an_upper_stage(hvp: str) -> None:
    cfg = BiSSLConfig(alternations=3, lower_steps=2, upper_steps=3, cg_iters=2, hvp=hvp)
    assert [phase_of_step(s, cfg)[0] for s in range(5)] == ["lower"] * 2 + ["upper"] * 3
    lower, upper = make_models()
    step = make_step(lower, upper, cfg, lr=(0.01, 0.01))
    seen: list[tuple[float, ...]] = []
    original = step.lower_loss

    def recording_loss(batch: Tensor) -> Tensor:
        seen.append(tuple(batch[:, 0].tolist()))  # the batch's content identifies it
        return original(batch)

    step.lower_loss = recording_loss
    trainer = make_trainer(step, make_data(), lower_batch=4, upper_batch=4)
    phases = []
    trainer.run(callback=lambda s, phase, m: phases.append(phase))
    assert phases == (["lower"] * 2 + ["upper"] * 3) * 3
    assert trainer.consumed == {"lower": 3 * 3, "upper": 3 * 3}
    # per alternation: 2 lower-step batches, then one Hessian batch reused by all 3 upper steps:
    # evaluated once per stage (exact: one graph for the stage's solves), or K = 2 times per
    # upper step (recompute)
    ids = seen
    per_stage = 1 if hvp == "exact" else 3 * 2
    size = 2 + per_stage
    assert len(ids) == 3 * size
    for a in range(3):
        chunk = ids[a * size : (a + 1) * size]
        assert len(set(chunk[:2])) == 2 and len(set(chunk[2:])) == 1
        assert chunk[2] not in chunk[:2]
    with pytest.raises(RuntimeError, match="already ran all 15 steps"):
        trainer.train_step()


@pytest.mark.parametrize("stop_at", [4, 7])  # inside an upper stage, and at a stage boundary
def test_resume_reproduces_uninterrupted_run(stop_at: int) -> None:
    cfg = BiSSLConfig(
        alternations=3, lower_steps=3, upper_steps=3, cg_iters=3, lam=0.01, damping=1.0
    )
    data = make_data()

    def fresh():
        lower, upper = make_models()
        step = make_step(lower, upper, cfg, lr=(0.05, 0.05), momentum=0.9, schedule=True)
        return lower, upper, make_trainer(step, data, lower_batch=4, upper_batch=4)

    lower_a, upper_a, trainer_a = fresh()
    trainer_a.run()

    lower_b, upper_b, trainer_b = fresh()
    trainer_b.run(max_steps=stop_at)
    buffer = io.BytesIO()  # the state must survive a weights-only round trip
    torch.save(
        {
            "trainer": trainer_b.state_dict(),
            "lower": lower_b.state_dict(),
            "upper": upper_b.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    lower_c, upper_c, trainer_c = fresh()
    lower_c.load_state_dict(saved["lower"])
    upper_c.load_state_dict(saved["upper"])
    trainer_c.load_state_dict(saved["trainer"])
    assert trainer_c.global_step == stop_at
    trainer_c.run()
    for (k, a), (_, c) in zip(
        list(lower_a.named_parameters()) + list(upper_a.named_parameters()),
        list(lower_c.named_parameters()) + list(upper_c.named_parameters()),
    ):
        torch.testing.assert_close(a, c, rtol=0, atol=0, msg=k)
    assert (
        trainer_c.step_fn.upper_optimizer.param_groups[0]["lr"]
        == trainer_a.step_fn.upper_optimizer.param_groups[0]["lr"]
    )


def test_resume_rejects_a_different_schedule() -> None:
    data = make_data()
    lower, upper = make_models()
    trainer = make_trainer(
        make_step(lower, upper, BiSSLConfig(alternations=2, lower_steps=2, upper_steps=2)),
        data,
        4,
        4,
    )
    state = trainer.state_dict()
    other = make_trainer(
        make_step(lower, upper, BiSSLConfig(alternations=3, lower_steps=2, upper_steps=2)),
        data,
        4,
        4,
    )
    with pytest.raises(ValueError, match="schedule"):
        other.load_state_dict(state)


def test_optimizer_must_hold_all_parameters() -> None:
    lower, upper = make_models()
    from bissl_dense.core import BilevelStep, prefix_correspondence

    with pytest.raises(ValueError, match="upper_optimizer does not hold 2 of the"):
        BilevelStep(
            lower_model=lower,
            lower_backbone=lower.backbone,
            upper_model=upper,
            correspondence=prefix_correspondence(lower.backbone, "encoder."),
            lower_loss=lower.loss,
            upper_loss=lambda b, p: torch.zeros(()),
            lower_optimizer=torch.optim.SGD(lower.parameters(), lr=0.1),
            upper_optimizer=torch.optim.SGD(upper.encoder.parameters(), lr=0.1),
        )


def test_resnet_alternation_with_batchnorm_statistics_contract() -> None:
    """A real ResNet-18 with BatchNorm: lower steps update the lower running statistics (train
    mode), upper steps (K Hessian-vector products on the Hessian batch) leave them exactly as
    they were, and the upper level moves θ_U and the head."""
    torch.set_default_dtype(torch.float32)
    from torch import nn

    from bissl_dense.core import BilevelStep, BilevelTrainer, prefix_correspondence
    from bissl_dense.pretext.backbones import build_backbone
    from bissl_dense.pretext.methods import SimCLR

    torch.manual_seed(0)
    lower = SimCLR(
        backbone=dict(arch="resnet18", cifar_stem=True), projector=dict(hidden_dim=32, out_dim=16)
    )
    upper = nn.Module()
    upper.backbone, dim = build_backbone("resnet18", cifar_stem=True)
    upper.head = nn.Linear(dim, 3)
    upper.backbone.load_state_dict(lower.backbone.state_dict())

    def lower_loss(views: tuple[Tensor, Tensor]) -> Tensor:
        return lower.pretext_loss(*views)

    def upper_loss(batch, backbone):
        x, y = batch
        if backbone is None:
            features = upper.backbone(x)
        else:  # θ_L substituted for the upper backbone
            stripped = {k[len("backbone.") :]: v for k, v in backbone.items()}
            features = functional_call(upper.backbone, stripped, (x,))
        return torch.nn.functional.cross_entropy(upper.head(features), y)

    cfg = BiSSLConfig(alternations=1, lower_steps=1, upper_steps=2, cg_iters=2)
    step = BilevelStep(
        lower_model=lower,
        lower_backbone=lower.backbone,
        upper_model=upper,
        correspondence=prefix_correspondence(lower.backbone, "backbone."),
        lower_loss=lower_loss,
        upper_loss=upper_loss,
        lower_optimizer=torch.optim.SGD(lower.parameters(), lr=0.01),
        upper_optimizer=torch.optim.SGD(upper.parameters(), lr=0.01),
        config=cfg,
    )
    g = torch.Generator().manual_seed(0)
    lower_batches = lambda start: iter(  # noqa: E731
        [
            (torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g))
            for _ in range(2)
        ]
    )
    upper_batches = lambda start: iter(  # noqa: E731
        [(torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
    )
    trainer = BilevelTrainer(step, lower_batches, upper_batches)
    stats = lambda: {k: v.clone() for k, v in lower.state_dict().items() if "running" in k}  # noqa: E731
    start = stats()
    trainer.train_step()  # lower
    after_lower = stats()
    assert any(not torch.equal(start[k], after_lower[k]) for k in start)
    theta_u = _snapshot(upper)
    trainer.train_step()  # upper (draws the Hessian batch)
    trainer.train_step()  # upper
    assert all(torch.equal(after_lower[k], v) for k, v in stats().items())
    moved = {k: (v - theta_u[k]).abs().max().item() for k, v in upper.named_parameters()}
    assert moved["head.weight"] > 0 and moved["backbone.layer4.1.conv2.weight"] > 0


def _failing_at_second_call(product):
    calls = []

    def failing(x):
        calls.append(1)
        u, c = product(x)
        if len(calls) == 2:
            u[0][0, 0] = float("nan")
        return u, c

    return failing


def test_solver_breakdown_is_logged_and_the_best_finite_iterate_used(caplog) -> None:
    """Issue 21: a non-finite Hessian-vector product (here the 2nd of K = 3) never reaches the
    optimiser. The upper step uses MINRES's iterate before it (what K = 1 gives: the same
    update), logs the step, where the solver stopped and the residual, and reports it."""
    data = make_data()
    lower_x, upper_x, upper_y = data
    results = {}
    for iters, fail in ((3, True), (1, False)):
        cfg = BiSSLConfig(alternations=1, lower_steps=1, upper_steps=2, cg_iters=iters, damping=1.0)
        lower, upper = make_models()
        step = make_step(lower, upper, cfg, lr=(0.1, 0.1))
        step.begin_upper_stage(lower_x[:8])
        if fail:
            step.implicit_solver._hvp = _failing_at_second_call(step.implicit_solver._hvp)
        with caplog.at_level("WARNING", logger="bissl_dense.core.bilevel"):
            metrics = step.upper_step((upper_x[:8], upper_y[:8]), lower_x[:8])
        results[iters] = (metrics, _snapshot(upper))
    metrics, failed = results[3]
    assert metrics["upper/solver_breakdown"] == 1.0
    assert 0.0 < metrics["upper/solver_residual"] <= 1.0
    assert results[1][0]["upper/solver_breakdown"] == 0.0
    for name, value in failed.items():
        assert torch.isfinite(value).all(), name
        torch.testing.assert_close(value, results[1][1][name], rtol=1e-12, atol=1e-14, msg=name)
    (record,) = [r for r in caplog.records if "BiSSL upper step" in r.getMessage()]
    message = record.getMessage()
    assert message.startswith("BiSSL upper step 0: minres stopped at product 2 of 3")
    assert "non-finite Hessian-vector product" in message and "relative residual" in message

"""Forward-over-reverse products (``hvp="jvp"``, issue 24) against the double backward through a
held graph (``"exact"``) on a BatchNorm ResNet with the SimCLR and BYOL lower losses, float64:
single products, every solver, a whole upper step."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bissl_dense.core import BiSSLConfig, make_hvp
from bissl_dense.core.implicit import ImplicitSolver
from bissl_dense.pretext.methods import BYOL, SimCLR


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _lower(method: str) -> tuple[nn.Module, list[Tensor], object]:
    torch.manual_seed(0)
    cls = BYOL if method == "byol" else SimCLR
    model = cls(backbone=dict(arch="resnet18", cifar_stem=True), projector=dict(hidden_dim=32))
    model = model.double().train()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]
    return model, list(model.backbone.parameters()), lambda: model.pretext_loss(*views)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_jvp_product_equals_the_double_backward(method: str) -> None:
    model, params, loss_fn = _lower(method)
    g = torch.Generator().manual_seed(2)
    v = [torch.randn(p.shape, generator=g) for p in params]
    exact = make_hvp(loss_fn, params, "exact")(v)
    jvp = make_hvp(loss_fn, params, "jvp", module=model)(v)
    scale = max(float(h.abs().max()) for h in exact)
    assert scale > 0
    error = max(float((a - b).abs().max()) for a, b in zip(jvp, exact, strict=True)) / scale
    print(f"{method}: max |jvp - exact| / max |exact| = {error:.1e}")
    assert error <= 1e-10
    # every BatchNorm is as it was (train mode, tracking its statistics)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    assert norms and all(m.track_running_stats and m.training for m in norms)


def test_jvp_leaves_the_running_statistics_alone() -> None:
    model, params, loss_fn = _lower("simclr")
    before = {k: v.clone() for k, v in model.named_buffers()}
    make_hvp(loss_fn, params, "jvp", module=model)([torch.ones_like(p) for p in params])
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name


def test_jvp_needs_the_module() -> None:
    model, params, loss_fn = _lower("simclr")
    with pytest.raises(ValueError, match="module"):
        make_hvp(loss_fn, params, "jvp")
    with pytest.raises(ValueError, match="not parameters of the module"):
        make_hvp(loss_fn, params, "jvp", module=model.projector)


@pytest.mark.parametrize("solver", ["cg", "minres", "recycled"])
def test_every_solver_gives_the_exact_modes_solution_with_jvp(solver: str) -> None:
    from tests.core._tiny_bilevel import make_data, make_models

    lower, _ = make_models()
    lower_x = make_data()[0][:8]
    params = list(lower.backbone.parameters())
    g = torch.Generator().manual_seed(3)
    rhs = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(3)]
    solutions = {}
    for hvp in ("exact", "jvp"):
        stage = ImplicitSolver(lam=0.01, damping=0.5, iters=4, hvp=hvp, solver=solver)
        stage.begin_stage(lambda: lower.loss(lower_x), params, module=lower)
        solutions[hvp] = [torch.cat([t.reshape(-1) for t in stage.solve(v)]) for v in rhs]
        stage.end_stage()
    for a, b in zip(solutions["jvp"], solutions["exact"], strict=True):
        assert float((a - b).norm() / b.norm()) <= 1e-10


def test_upper_step_with_jvp_products_equals_exact() -> None:
    """The whole upper step (the stage's products through BilevelStep) with hvp='jvp'."""
    from tests.core._tiny_bilevel import make_data, make_models, make_step

    lower_x, upper_x, upper_y = make_data()
    after = {}
    for hvp in ("exact", "jvp"):
        lower, upper = make_models()
        cfg = BiSSLConfig(alternations=1, lower_steps=1, upper_steps=1, cg_iters=3, hvp=hvp)
        step = make_step(lower, upper, cfg, lr=(0.1, 0.1))
        step.upper_step((upper_x[:8], upper_y[:8]), lower_x[:8])
        after[hvp] = {k: v.detach().clone() for k, v in upper.named_parameters()}
    for name, value in after["exact"].items():
        torch.testing.assert_close(after["jvp"][name], value, rtol=1e-10, atol=1e-12)

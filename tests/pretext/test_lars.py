"""LARS against a hand computation over two momentum steps, and its exclusion rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bissl_dense.pretext.lars import LARS, build_lars, lars_param_groups


def _norm(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def _hand_lars(
    weights: list[float],
    grads: list[list[float]],
    lr: float,
    momentum: float,
    weight_decay: float,
    eta: float,
    excluded: bool,
) -> list[float]:
    """The VICReg/BiSSL LARS update, element by element in Python floats."""
    w = list(weights)
    buffer = [0.0] * len(w)
    for g in grads:
        if excluded:
            update = list(g)
        else:
            update = [gi + weight_decay * wi for gi, wi in zip(g, w, strict=True)]
            w_norm, u_norm = _norm(w), _norm(update)
            ratio = eta * w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            update = [ratio * u for u in update]
        buffer = [momentum * b + u for b, u in zip(buffer, update, strict=True)]
        w = [wi - lr * b for wi, b in zip(w, buffer, strict=True)]
    return w


def _flat(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().reshape(-1)]


def test_two_steps_match_hand_computation_with_1d_exclusion() -> None:
    lr, momentum, weight_decay, eta = 0.7, 0.9, 0.05, 0.01
    weight = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64))
    bias = nn.Parameter(torch.tensor([0.3, -0.1], dtype=torch.float64))
    grads_weight = [[0.2, -0.4, 1.0, 0.1], [-0.3, 0.5, 0.2, 0.7]]
    grads_bias = [[1.5, -2.0], [0.4, 0.9]]
    expected_weight = _hand_lars(
        _flat(weight), grads_weight, lr, momentum, weight_decay, eta, excluded=False
    )
    expected_bias = _hand_lars(
        _flat(bias), grads_bias, lr, momentum, weight_decay, eta, excluded=True
    )

    optimizer = LARS(
        [weight, bias], lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=eta
    )
    for g_w, g_b in zip(grads_weight, grads_bias, strict=True):
        weight.grad = torch.tensor(g_w, dtype=torch.float64).view(2, 2)
        bias.grad = torch.tensor(g_b, dtype=torch.float64)
        optimizer.step()
    assert _flat(weight) == pytest.approx(expected_weight, rel=1e-12, abs=1e-15)
    assert _flat(bias) == pytest.approx(expected_bias, rel=1e-12, abs=1e-15)
    # Exclusion matters here: adapting the bias would move it by a factor ~eta less.
    adapted_bias = _hand_lars(
        [0.3, -0.1], grads_bias, lr, momentum, weight_decay, eta, excluded=False
    )
    assert _flat(bias) != pytest.approx(adapted_bias, rel=1e-3)


def test_group_flag_overrides_ndim_rule_and_exclude_1d_false_adapts_all() -> None:
    lr, momentum, weight_decay, eta = 0.5, 0.9, 0.1, 0.02
    matrix = nn.Parameter(torch.tensor([[2.0, 1.0]], dtype=torch.float64))
    vector = nn.Parameter(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    grads_matrix = [[0.5, -0.5], [0.1, 0.3]]
    grads_vector = [[0.2, 0.0, -1.0], [0.6, 0.6, 0.6]]
    optimizer = LARS(
        [
            {"params": [matrix], "lars_exclude": True},
            {"params": [vector], "lars_exclude": False},
        ],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        trust_coefficient=eta,
    )
    for g_m, g_v in zip(grads_matrix, grads_vector, strict=True):
        matrix.grad = torch.tensor([g_m], dtype=torch.float64)
        vector.grad = torch.tensor(g_v, dtype=torch.float64)
        optimizer.step()
    assert _flat(matrix) == pytest.approx(
        _hand_lars([2.0, 1.0], grads_matrix, lr, momentum, weight_decay, eta, excluded=True)
    )
    assert _flat(vector) == pytest.approx(
        _hand_lars([1.0, -1.0, 2.0], grads_vector, lr, momentum, weight_decay, eta, False)
    )

    bias = nn.Parameter(torch.tensor([0.5, 0.5], dtype=torch.float64))
    adapt_all = LARS([bias], lr=lr, weight_decay=weight_decay, exclude_1d=False)
    bias.grad = torch.tensor([1.0, 0.0], dtype=torch.float64)
    adapt_all.step()
    assert _flat(bias) == pytest.approx(
        _hand_lars([0.5, 0.5], [[1.0, 0.0]], lr, 0.9, weight_decay, 0.001, excluded=False)
    )


def test_zero_weight_gets_unit_trust_ratio_and_missing_grad_is_skipped() -> None:
    zero = nn.Parameter(torch.zeros(2, 2))
    untouched = nn.Parameter(torch.ones(3, 3))
    optimizer = LARS([zero, untouched], lr=0.1, weight_decay=0.0)
    zero.grad = torch.ones(2, 2)
    optimizer.step()
    torch.testing.assert_close(zero.detach(), torch.full((2, 2), -0.1))
    torch.testing.assert_close(untouched.detach(), torch.ones(3, 3))


def test_param_groups_split_resnet_like_model_by_ndim() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # frozen parameters are left out
    groups = lars_param_groups(model, weight_decay=1e-6)
    assert [g["lars_exclude"] for g in groups] == [False, True]
    assert [g["weight_decay"] for g in groups] == [1e-6, 0.0]
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in groups[1]["params"]} == {
        id(model[1].weight),
        id(model[1].bias),
        id(model[3].bias),
    }

    optimizer = build_lars(model, lr=4.8)
    assert isinstance(optimizer, LARS)
    assert optimizer.param_groups[0]["trust_coefficient"] == 0.001
    assert optimizer.param_groups[0]["momentum"] == 0.9
    loss = model(torch.randn(2, 3, 3, 3)).sum()
    loss.backward()
    optimizer.step()
    state = optimizer.state_dict()
    restored = build_lars(model, lr=4.8)
    restored.load_state_dict(state)
    buffer = restored.state[model[0].weight]["momentum_buffer"]
    torch.testing.assert_close(buffer, optimizer.state[model[0].weight]["momentum_buffer"])


def test_invalid_hyper_parameters_are_refused() -> None:
    params = [nn.Parameter(torch.ones(2, 2))]
    with pytest.raises(ValueError, match="lr"):
        LARS(params, lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        LARS(params, lr=1.0, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        LARS(params, lr=1.0, weight_decay=-1.0)
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS(params, lr=1.0, trust_coefficient=0.0)


def _resnet_like() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
        nn.LayerNorm(5),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_step_equals_reference_step(dtype: torch.dtype) -> None:
    """The multi-tensor step against the per-tensor reference loop over 4 steps, with decayed
    and adapted weights, excluded 1-D parameters, a zero weight (trust ratio 1), a parameter
    without gradient and a group whose flag overrides the ndim rule."""
    torch.manual_seed(0)
    reference = _resnet_like().to(dtype)
    with torch.no_grad():
        reference[2].bias.zero_()
        reference[4].weight[0].zero_()
        reference[0].weight.zero_()  # zero norm: unit trust ratio on the first step
    fused = _resnet_like().to(dtype)
    fused.load_state_dict(reference.state_dict())

    def groups(model: nn.Module) -> list[dict]:
        return [
            {"params": [model[0].weight, model[1].weight, model[1].bias, model[2].weight]},
            {"params": [model[2].bias, model[4].weight], "lars_exclude": True},
            {"params": [model[4].bias, model[5].weight, model[5].bias], "lars_exclude": False},
        ]

    options = dict(lr=0.9, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02)
    opt_reference = LARS(groups(reference), foreach=False, **options)
    opt_fused = LARS(groups(fused), foreach=True, **options)
    x = torch.randn(4, 3, 8, 8, dtype=dtype)
    for step in range(4):
        for model, opt in ((reference, opt_reference), (fused, opt_fused)):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            if step == 1:
                model[5].bias.grad = None  # skipped this step
            opt.step()
        for (name, a), b in zip(reference.named_parameters(), fused.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=f"{name} step {step}")
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        torch.testing.assert_close(
            opt_fused.state[p_fused]["momentum_buffer"],
            opt_reference.state[p_ref]["momentum_buffer"],
            rtol=1e-6,
            atol=1e-7,
        )
    # the weights did move (the comparison is not between two untouched models)
    assert not torch.equal(reference[2].weight, _resnet_like().to(dtype)[2].weight)


def test_state_dict_without_foreach_flag_loads() -> None:
    """Optimizer states saved before the flag existed still load (and use the fused step)."""
    model = _resnet_like()
    optimizer = build_lars(model, lr=1.0)
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        del group["foreach"]
    restored = build_lars(model, lr=1.0)
    restored.load_state_dict(state)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    restored.step()

"""Mixed precision (bf16/fp16 autocast) and channels-last in BiSSL's core (issue 13).

A tiny convolutional bilevel problem in float32 (autocast does not cast float64): the same
alternation is run in float32, under autocast, and with NHWC tensors, from identical states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from bissl_dense.core import BilevelStep, BilevelTrainer, BiSSLConfig, prefix_correspondence

CONFIG = dict(lam=0.5, damping=1.0, cg_iters=3, solver="minres", alternations=1)


def make_backbone() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.Tanh(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class Pretext(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = make_backbone()
        self.head = nn.Linear(8, 4)

    def loss(self, x: Tensor) -> Tensor:
        target = x.mean(dim=(2, 3)).repeat(1, 2)[:, :4]
        return ((self.head(self.backbone(x)) - target.sin()) ** 2).mean()


class Downstream(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = make_backbone()
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.encoder(x))


def make_data(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    lower_x = torch.randn(8, 3, 6, 6, generator=g)
    upper_x = torch.randn(8, 3, 6, 6, generator=g)
    upper_y = torch.randint(0, 3, (8,), generator=g)
    return lower_x, upper_x, upper_y


def build(
    config: BiSSLConfig,
    channels_last: bool = False,
    upper_scale: float = 1.0,
) -> tuple[BilevelStep, Pretext, Downstream]:
    """Identical float32 models (seed 0), SGD with momentum at both levels."""
    torch.manual_seed(0)
    lower, upper = Pretext(), Downstream()
    upper.encoder.load_state_dict(lower.backbone.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    if channels_last:
        lower.to(memory_format=torch.channels_last)
        upper.to(memory_format=torch.channels_last)

    def lower_loss(x: Tensor) -> Tensor:
        return lower.loss(x.contiguous(memory_format=fmt))

    def upper_loss(batch: tuple[Tensor, Tensor], backbone: Mapping[str, Tensor] | None) -> Tensor:
        x, y = batch
        x = x.contiguous(memory_format=fmt)
        logits = upper(x) if backbone is None else functional_call(upper, dict(backbone), (x,))
        return nn.functional.cross_entropy(logits, y) * upper_scale

    step = BilevelStep(
        lower_model=lower,
        lower_backbone=lower.backbone,
        upper_model=upper,
        correspondence=prefix_correspondence(lower.backbone, "encoder."),
        lower_loss=lower_loss,
        upper_loss=upper_loss,
        lower_optimizer=torch.optim.SGD(lower.parameters(), lr=0.1, momentum=0.9),
        upper_optimizer=torch.optim.SGD(upper.parameters(), lr=0.1, momentum=0.9),
        config=config,
    )
    return step, lower, upper


def alternation(step: BilevelStep, data: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
    """2 lower steps, then an upper stage of 2 upper steps on a fixed Hessian batch."""
    lower_x, upper_x, upper_y = data
    step.lower_model.train()
    step.upper_model.train()
    step.lower_step(lower_x[:4])
    step.lower_step(lower_x[4:])
    step.begin_upper_stage(lower_x[:4])
    step.upper_step((upper_x[:4], upper_y[:4]), lower_x[:4])
    metrics = step.upper_step((upper_x[4:], upper_y[4:]), lower_x[:4])
    step.end_upper_stage()
    return metrics


def upper_update(upper: Downstream, before: dict[str, Tensor]) -> Tensor:
    return torch.cat([(p.detach() - before[n]).flatten() for n, p in upper.named_parameters()])


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def reference_update(data: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    step, _, upper = build(BiSSLConfig(**CONFIG))
    before = snapshot(upper)
    alternation(step, data)
    return upper_update(upper, before)


class DTypeRecorder:
    """Records the dtype of every convolution/linear output, tagged with the current phase."""

    def __init__(self, *modules: nn.Module) -> None:
        self.phase = ""
        self.seen: list[tuple[str, torch.dtype]] = []
        for module in modules:
            for m in module.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    m.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.seen.append((self.phase, output.dtype))

    def dtypes(self, phase: str) -> set[torch.dtype]:
        return {dtype for p, dtype in self.seen if p == phase}


def test_autocast_option_is_validated() -> None:
    with pytest.raises(ValueError, match="autocast='fp16'"):
        BiSSLConfig(autocast="fp16")  # type: ignore[arg-type]
    assert BiSSLConfig(autocast="bfloat16").autocast == "bfloat16"


def test_bf16_losses_float32_products_parameters_and_states() -> None:
    data = make_data()
    reference = reference_update(data)
    step, lower, upper = build(BiSSLConfig(**CONFIG, autocast="bfloat16"))
    assert step.lower_scaler is None and step.upper_scaler is None  # bf16 needs no scaling
    recorder = DTypeRecorder(lower, upper)
    lower_x, upper_x, upper_y = data
    solutions: list[Tensor] = []
    solve = step.implicit_solver.solve

    def recording_solve(vectors: list[Tensor]) -> list[Tensor]:
        x = solve(vectors)
        solutions.extend(x)
        return x

    step.implicit_solver.solve = recording_solve  # type: ignore[method-assign]
    before = snapshot(upper)

    recorder.phase = "lower"
    step.lower_step(lower_x[:4])
    step.lower_step(lower_x[4:])
    recorder.phase = "stage"  # the solver's graph of L_P on the Hessian batch
    step.begin_upper_stage(lower_x[:4])
    recorder.phase = "upper"  # the two upper losses; the products reuse the stage's graph
    step.upper_step((upper_x[:4], upper_y[:4]), lower_x[:4])
    step.upper_step((upper_x[4:], upper_y[4:]), lower_x[:4])
    step.end_upper_stage()
    recorder.phase = "residual"  # a Hessian-vector product outside a stage (make_hvp)
    last = solutions[-len(step.lower_backbone_params) :]
    step.relative_residual(lower_x[:4], last, last)

    assert recorder.dtypes("lower") == {torch.bfloat16}
    assert recorder.dtypes("upper") == {torch.bfloat16}
    assert recorder.dtypes("stage") == {torch.float32}
    assert recorder.dtypes("residual") == {torch.float32}
    assert solutions and all(x.dtype == torch.float32 for x in solutions)
    for model, optimizer in ((lower, step.lower_optimizer), (upper, step.upper_optimizer)):
        for p in model.parameters():
            assert p.dtype == torch.float32
            assert p.grad is not None and p.grad.dtype == torch.float32
            assert optimizer.state[p]["momentum_buffer"].dtype == torch.float32
    for b in list(lower.buffers()) + list(upper.buffers()):
        assert b.dtype in (torch.float32, torch.int64)

    # bf16 keeps 8 significant bits: each rounding is within 2^-9 ≈ 2e-3 relative, and the update
    # goes through ~6 rounded layers forward and backward and two lower steps that move θ_L;
    # measured 2.7e-3 to 5.5e-3 over data seeds 0-2. 3e-2 leaves room for other CPUs' kernels and
    # is far below what a wrong update is off by (a lost implicit term: O(1)).
    error = relative_error(upper_update(upper, before), reference)
    assert 0.0 < error < 3e-2, error


def test_fp16_uses_a_scaler_per_level_and_matches_float32() -> None:
    data = make_data()
    reference = reference_update(data)
    step, _, upper = build(BiSSLConfig(**CONFIG, autocast="float16"))
    assert isinstance(step.lower_scaler, torch.amp.GradScaler)
    assert isinstance(step.upper_scaler, torch.amp.GradScaler)
    assert step.lower_scaler is not step.upper_scaler
    before = snapshot(upper)
    metrics = alternation(step, data)
    # no overflow at the initial scale 2^16: no step was skipped, the scales are unchanged
    assert metrics["upper/loss_scale"].item() == 65536.0
    assert step.lower_scaler.get_scale() == step.upper_scaler.get_scale() == 65536.0
    # fp16 keeps 11 significant bits (2^-12 ≈ 2.4e-4 per rounding, 8x finer than bf16): measured
    # 3.5e-4 to 6.3e-4 over data seeds 0-2; the bound is bf16's divided by 8
    error = relative_error(upper_update(upper, before), reference)
    assert 0.0 < error < 4e-3, error


def test_fp16_solve_is_the_unscaled_solve() -> None:
    """The implicit term under loss scaling equals the float32 one (the solve of s·v is s times
    the solve of v, and GradScaler.unscale_ divides by s)."""
    data = make_data()
    lower_x, upper_x, upper_y = data
    rhs: dict[str, list[Tensor]] = {}
    for mode in (None, "float16"):
        step, _, _ = build(BiSSLConfig(**CONFIG, autocast=mode))
        solve = step.implicit_solver.solve
        seen: list[Tensor] = []

        def recording_solve(
            vectors: list[Tensor], solve: Callable = solve, seen: list[Tensor] = seen
        ) -> list[Tensor]:
            x = solve(vectors)
            seen.extend(torch.cat([v.flatten() for v in t]) for t in (vectors, x))
            return x

        step.implicit_solver.solve = recording_solve  # type: ignore[method-assign]
        step.upper_step((upper_x, upper_y), lower_x)  # θ_L = θ_U: same point in both runs
        rhs[str(mode)] = seen
    (v32, x32), (v16, x16) = rhs["None"], rhs["float16"]
    scale = 65536.0
    assert relative_error(v16 / scale, v32) < 4e-3  # the fp16 backward's own rounding
    assert relative_error(x16 / scale, x32) < 4e-3
    # the solve is homogeneous of degree one: solving v16 / s gives x16 / s
    step, _, _ = build(BiSSLConfig(**CONFIG))
    step.begin_upper_stage(lower_x)
    shapes = [p.shape for p in step.lower_backbone_params]
    sizes = [s.numel() for s in shapes]
    unscaled = [t.view(s) for t, s in zip((v16 / scale).split(sizes), shapes, strict=True)]
    x = torch.cat([t.flatten() for t in step.implicit_solver.solve(unscaled)])
    torch.testing.assert_close(x, x16 / scale, rtol=1e-5, atol=1e-7)


def test_fp16_overflow_skips_the_step_and_the_solve_and_backs_off() -> None:
    data = make_data()
    lower_x, upper_x, upper_y = data
    # ×1e6 makes the scaled loss's gradient overflow fp16's range (65504) in the backward
    step, _, upper = build(BiSSLConfig(**CONFIG, autocast="float16"), upper_scale=1e6)
    calls: list[int] = []
    solve = step.implicit_solver.solve
    step.implicit_solver.solve = lambda v: calls.append(1) or solve(v)  # type: ignore[method-assign]
    before = snapshot(upper)
    step.upper_step((upper_x, upper_y), lower_x)
    assert calls == []  # a non-finite right-hand side is not solved
    assert all(torch.equal(p.detach(), before[n]) for n, p in upper.named_parameters())
    assert step.upper_scaler.get_scale() == 32768.0  # backed off by 0.5
    assert step.lower_scaler.get_scale() == 65536.0  # the other level's scale is its own
    assert step.upper_updates == 1


def test_scaler_state_is_saved_and_resumed(tmp_path) -> None:
    data = make_data()
    lower_x, upper_x, upper_y = data
    step, _, _ = build(BiSSLConfig(**CONFIG, autocast="float16"), upper_scale=1e6)
    step.upper_step((upper_x, upper_y), lower_x)  # overflow: 32768
    trainer = BilevelTrainer(step, lambda s: iter(()), lambda s: iter(()))
    path = tmp_path / "state.pt"
    torch.save(trainer.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert state["step"]["upper_scaler"]["scale"] == 32768.0
    assert state["step"]["lower_scaler"]["scale"] == 65536.0

    resumed, _, _ = build(BiSSLConfig(**CONFIG, autocast="float16"))
    BilevelTrainer(resumed, lambda s: iter(()), lambda s: iter(())).load_state_dict(state)
    assert resumed.upper_scaler.get_scale() == 32768.0
    assert resumed.lower_scaler.get_scale() == 65536.0
    assert resumed.upper_scaler.state_dict() == step.upper_scaler.state_dict()
    # bf16 and float32 runs have no scaler state; a precision change on resume is allowed
    plain, _, _ = build(BiSSLConfig(**CONFIG))
    assert "upper_scaler" not in plain.state_dict()
    plain.load_state_dict(state["step"])


def test_channels_last_gives_the_float32_update() -> None:
    data = make_data()
    reference = reference_update(data)
    step, lower, upper = build(BiSSLConfig(**CONFIG), channels_last=True)
    conv = lower.backbone[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    before = snapshot(upper)
    alternation(step, data)
    assert upper.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    # NHWC kernels sum in another order: float32 rounding only (measured 4e-7 relative, 1.5e-8
    # largest absolute difference, for an update of norm 0.12)
    torch.testing.assert_close(upper_update(upper, before), reference, rtol=1e-5, atol=1e-7)

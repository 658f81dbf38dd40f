"""The BiSSL stage's wiring: per-level schedules by value, BYOL's EMA after every lower step,
upper model in train mode, and BatchNorm statistics untouched by the substituted pass."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch

from bissl_dense.core import BilevelTrainer, BiSSLConfig
from bissl_dense.core import bilevel as bilevel_module
from bissl_dense.stage import LevelOptimizers, level_schedulers
from tests.stage._small import labelled, make_step, views


def _constant_source(make):
    def source(start: int):
        k = start
        while True:
            yield make(k)
            k += 1

    return source


def _trainer(step) -> BilevelTrainer:
    return BilevelTrainer(
        step,
        _constant_source(lambda k: views(seed=k)),
        _constant_source(lambda k: labelled(seed=100 + k)),
    )


def test_level_schedules_follow_spec_values() -> None:
    config = BiSSLConfig(alternations=30, lower_steps=2, upper_steps=3)
    lower_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    upper_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    lower, upper = level_schedulers(LevelOptimizers(lower_opt, upper_opt), config)
    warmup, lower_total, upper_total = 10 * 2, 30 * 2, 30 * 3
    for k in range(lower_total):
        expected = (
            (k + 1) / warmup
            if k < warmup
            else 0.5 * (1 + math.cos(math.pi * (k - warmup) / (lower_total - warmup)))
        )
        assert lower_opt.param_groups[0]["lr"] == pytest.approx(expected), k
        lower_opt.step()
        lower.step()
    for k in range(upper_total):
        assert upper_opt.param_groups[0]["lr"] == pytest.approx(
            0.2 * 0.5 * (1 + math.cos(math.pi * k / upper_total))
        ), k
        upper_opt.step()
        upper.step()


def test_each_level_schedule_advances_only_on_its_own_steps() -> None:
    config = BiSSLConfig(alternations=2, lower_steps=2, upper_steps=2, cg_iters=1)
    _, _, step = make_step(config=config)
    trainer = _trainer(step)
    lower_lrs, upper_lrs = [], []
    while not trainer.done:
        lower_lrs.append(step.lower_optimizer.param_groups[0]["lr"])
        upper_lrs.append(step.upper_optimizer.param_groups[0]["lr"])
        trainer.train_step()
    # schedule: L L U U L L U U ; lower warm-up over 10·N_L = 20 steps (capped at T·N_L = 4)
    lower_expected = [1.0 * (k + 1) / 4 for k in range(4)]
    assert [lower_lrs[i] for i in (0, 1, 4, 5)] == pytest.approx(lower_expected)
    assert (
        lower_lrs[2] == lower_lrs[3] == pytest.approx(lower_expected[2])
    )  # frozen while upper runs
    upper_expected = [0.05 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert [upper_lrs[i] for i in (2, 3, 6, 7)] == pytest.approx(upper_expected)
    assert upper_lrs[0] == upper_lrs[1] == upper_lrs[2]


def test_byol_target_follows_ema_after_every_lower_step() -> None:
    config = BiSSLConfig(alternations=1, lower_steps=2, upper_steps=1, cg_iters=1)
    pretext, _, step = make_step("byol", config=config, base_momentum=0.9)
    trainer = _trainer(step)
    for _ in range(2):
        before = [p.detach().clone() for p in pretext.target_projector.parameters()]
        trainer.train_step()  # one lower step
        online = list(pretext.projector.parameters())
        for t_before, t_now, o in zip(
            before, pretext.target_projector.parameters(), online, strict=True
        ):
            torch.testing.assert_close(t_now, 0.9 * t_before + 0.1 * o.detach())
    before = [p.detach().clone() for p in pretext.target_projector.parameters()]
    trainer.train_step()  # the upper step does not move the target
    for t_before, t_now in zip(before, pretext.target_projector.parameters(), strict=True):
        assert torch.equal(t_before, t_now)


def test_upper_model_in_train_mode_for_every_upper_pass() -> None:
    config = BiSSLConfig(alternations=1, lower_steps=1, upper_steps=2, cg_iters=1)
    _, task, step = make_step(config=config)
    seen: list[bool] = []
    inner = step.upper_loss

    def recording(batch, backbone):
        seen.append(task.model.training)
        return inner(batch, backbone)

    step.upper_loss = recording
    trainer = _trainer(step)
    trainer.train_step()  # lower
    for _ in range(2):
        task.model.eval()  # e.g. left in eval mode by a validation pass
        trainer.train_step()
    assert seen == [True] * 4  # two passes (θ_U and θ_L substituted) per upper step


@pytest.mark.parametrize("restore", [True, False])
def test_substituted_pass_leaves_upper_batchnorm_statistics(monkeypatch, restore: bool) -> None:
    """The running statistics after an upper step equal those of the θ_U pass alone.

    Control (restore=False): without restoring them, the pass with θ_L moves them too, so the
    test can see the difference."""
    config = BiSSLConfig(alternations=1, lower_steps=1, upper_steps=1, cg_iters=1)
    pretext, task, step = make_step(config=config)
    if not restore:
        monkeypatch.setattr(bilevel_module, "restored_buffers", lambda module: nullcontext())
    trainer = _trainer(step)
    trainer.train_step()  # lower step: θ_L now differs from θ_U
    reference = type(task.model)(num_classes=3, backbone=dict(arch="resnet18", cifar_stem=True))
    reference.load_state_dict(task.model.state_dict())
    reference.train()
    images, _ = labelled(seed=100)
    with torch.no_grad():
        reference(images, mode="tensor")  # the θ_U pass alone
    trainer.train_step()  # the upper step, on the same batch
    expected = dict(reference.named_buffers())
    same = all(torch.equal(b, expected[n]) for n, b in task.model.named_buffers())
    assert same == restore


def test_reference_parity_schedules_are_the_references() -> None:
    """Parity: the first update of each level at the base rate, warm-up n/W, cosine to 0.001 of
    the base (the reference's scheduler, stepped after each update); bissl's default warms up
    from (n + 1)/W and ends at 0."""

    def rates(config: BiSSLConfig) -> tuple[list[float], list[float]]:
        opts = LevelOptimizers(
            lower=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0),
            upper=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5),
        )
        lower, upper = level_schedulers(opts, config)
        out: tuple[list[float], list[float]] = ([], [])
        for scheduler, seen, n in ((lower, out[0], 3 * 30), (upper, out[1], 3 * 2)):
            for _ in range(n):
                seen.append(scheduler.optimizer.param_groups[0]["lr"])
                scheduler.optimizer.step()
                scheduler.step()
        return out

    cfg = dict(alternations=3, lower_steps=30, upper_steps=2)
    lower, upper = rates(BiSSLConfig(reference_parity=True, **cfg))
    w, total = 10 * 30, 3 * 30
    expected_lower = [2.0] + [2.0 * n / w for n in range(1, total)]  # all within the warm-up
    assert lower == pytest.approx(expected_lower)
    q = [0.5 * (1 + math.cos(math.pi * n / 6)) for n in range(6)]
    assert upper == pytest.approx([0.5 * (qn + 0.001 * (1 - qn)) for qn in q])
    default_lower, default_upper = rates(BiSSLConfig(**cfg))
    assert default_lower[0] == pytest.approx(2.0 / 90) and default_upper[-1] < upper[-1]

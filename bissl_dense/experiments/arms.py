"""The arms of ``bissl compare`` (SPEC §4, §6): how each one prepares its fine-tuning runs.

Every arm ends in the same fine-tuning search and seed runs (``stages.finetune_trial``); arms
differ only in what they fine-tune from, i.e. in fixed fine-tuning overrides, and in a
preparation run once before the search:

========================  ===================================================================
``ft``                    the pretext backbone (conventional fine-tuning, the reference)
``bissl``                 head warm-up → BiSSL → its lower backbone (SPEC §1)
``ij_discarded``          BiSSL with ``train_cfg.bissl.discard_implicit_jacobian=True`` (§6)
``nu1``                   BiSSL with ``train_cfg.bissl.upper_steps=1`` (N_U = 1, §6)
``lambda_<value>``        BiSSL with ``train_cfg.bissl.lam=<value>`` (the λ sweep, §6)
``random_init``           no backbone file: random initialisation
``linear_probe``          the pretext backbone frozen (``model.freeze_backbone=True``)
``zero_head``             the pretext backbone, zero-initialised head (``model.zero_init_head``)
``noisytune``             the pretext backbone perturbed once by NoisyTune (``noisytune_``)
``weighted_sum``          head warm-up → (1−w)·L_P + w·L_D for T·N_U steps → its backbone
                          (``--weighted-sum-config``, or derived from ``--bissl-config``;
                          w = 0.5 unless the config says otherwise; App. B.9.4)
``weighted_sum_<w>``      the same with ``train_cfg.w=<w>`` (a w sweep, like ``lambda_<v>``)
``data_mix``              continued pretext training on pretext + downstream training images
                          for T·N_L steps → its backbone (``--data-mix-config``, or derived
                          from ``--bissl-config``; App. B.9.3)
========================  ===================================================================

Preparations are resumable: a stage whose export exists is skipped; one that was killed is
resumed from its last checkpoint (``stages.run_stage``). The BiSSL variants and the weighted
sums share one head warm-up. The weighted-sum and data-mix configs inherit the BiSSL config
(:mod:`bissl_dense.baselines`), so ``--bissl-options`` (data roots, T, N_L, N_U) apply to them
too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bissl_dense.errors import ConfigError
from bissl_dense.experiments.progress import print_line
from bissl_dense.experiments.stages import run_stage

__all__ = [
    "ARM_NAMES",
    "ArmInputs",
    "PreparedArm",
    "bissl_overrides",
    "parse_arms",
    "prepare_arm",
    "weighted_sum_overrides",
]

#: Arms with a fixed name; ``lambda_<value>`` and ``weighted_sum_<w>`` arms come on top.
ARM_NAMES = (
    "ft",
    "bissl",
    "ij_discarded",
    "nu1",
    "random_init",
    "linear_probe",
    "zero_head",
    "noisytune",
    "weighted_sum",
    "data_mix",
)
_LAMBDA = re.compile(r"^lambda_(.+)$")
_WEIGHTED_SUM = re.compile(r"^weighted_sum(?:_(.+))?$")
#: The single-level baselines (bissl_dense.baselines): kind → the ArmInputs field of its config.
_SINGLE_LEVEL = {"weighted_sum": "weighted_sum_config", "data_mix": "data_mix_config"}


@dataclass(frozen=True)
class ArmInputs:
    """What every arm starts from (the arguments of ``bissl compare``)."""

    finetune_config: Path
    backbone: Path
    head: Path | None = None
    warmup_config: Path | None = None
    bissl_config: Path | None = None
    #: configs inheriting the BiSSL config (``bissl_dense.baselines``)
    weighted_sum_config: Path | None = None
    data_mix_config: Path | None = None
    #: overrides of every stage (e.g. data roots), and of each stage kind
    common_options: Mapping[str, Any] = field(default_factory=dict)
    finetune_options: Mapping[str, Any] = field(default_factory=dict)
    warmup_options: Mapping[str, Any] = field(default_factory=dict)
    bissl_options: Mapping[str, Any] = field(default_factory=dict)
    noisytune_scale: float = 0.15
    noisytune_seed: int = 0


@dataclass(frozen=True)
class PreparedArm:
    """An arm ready for its search: fine-tuning overrides, and the BiSSL run if there was one."""

    name: str
    options: dict[str, Any]
    bissl_work_dir: Path | None = None


def bissl_overrides(name: str) -> dict[str, Any] | None:
    """The BiSSL options of a BiSSL-based arm, or None for an arm without BiSSL."""
    if name == "bissl":
        return {}
    if name == "ij_discarded":
        return {"train_cfg.bissl.discard_implicit_jacobian": True}
    if name == "nu1":
        return {"train_cfg.bissl.upper_steps": 1}
    if match := _LAMBDA.match(name):
        try:
            lam = float(match.group(1))
        except ValueError:
            raise ConfigError(
                f"arm {name!r}: {match.group(1)!r} is not a number (lambda_0.01)"
            ) from None
        if not math.isfinite(lam) or lam < 0:
            raise ConfigError(f"arm {name!r}: λ must be a finite number >= 0")
        return {"train_cfg.bissl.lam": lam}
    return None


def weighted_sum_overrides(name: str) -> dict[str, Any] | None:
    """The options of a weighted-sum arm (``weighted_sum``, ``weighted_sum_<w>``), else None."""
    match = _WEIGHTED_SUM.match(name)
    if match is None:
        return None
    if match.group(1) is None:
        return {}
    from bissl_dense.baselines.weighted_sum import check_w

    return {"train_cfg.w": check_w(match.group(1), f"arm {name!r}: w (weighted_sum_0.5)")}


def parse_arms(text: str) -> list[str]:
    """``"ft,bissl,lambda_0.01"`` → the arm names, checked (unknown names are one clear error)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError("--arms is empty; e.g. --arms ft,bissl")
    if len(set(names)) != len(names):
        raise ConfigError(f"--arms names an arm twice: {names}")
    for name in names:
        if name in ARM_NAMES or bissl_overrides(name) is not None:
            continue
        if weighted_sum_overrides(name) is None:
            raise ConfigError(
                f"unknown arm {name!r}; choose from {', '.join(ARM_NAMES)}, lambda_<value> or "
                "weighted_sum_<w>"
            )
    return names


def _warmup(inputs: ArmInputs, root: Path, log: Callable[[str], None]) -> Path:
    if inputs.warmup_config is None:
        raise ConfigError("the BiSSL arms need --warmup-config (the head warm-up config)")
    work_dir = root / "warmup"
    head = work_dir / "export" / "head.pth"
    if head.is_file():
        log(f"[prepare] head warm-up done before: {head}")
        return head
    log(f"[prepare] head warm-up → {work_dir}")
    options = {
        **inputs.common_options,
        **inputs.warmup_options,
        "model.backbone_checkpoint": str(inputs.backbone),
    }
    run_stage(inputs.warmup_config, work_dir, options)
    if not head.is_file():
        raise FileNotFoundError(f"the head warm-up finished without writing '{head}'")
    return head


def _lower_backbone(work_dir: Path) -> Path | None:
    found = sorted((work_dir / "export").glob("BiSSL_*_lower_backbone_id-*.pth"))
    return found[-1] if found else None


def _bissl(
    name: str, overrides: dict[str, Any], inputs: ArmInputs, root: Path, log: Callable[[str], None]
) -> tuple[Path, Path]:
    if inputs.bissl_config is None or inputs.head is None:
        raise ConfigError(f"arm {name!r} needs --bissl-config and --head (the pretext head file)")
    work_dir = root / name
    if (done := _lower_backbone(work_dir)) is not None:
        log(f"[prepare] {name}: BiSSL done before: {done}")
        return done, work_dir
    task_head = _warmup(inputs, root, log)
    log(f"[prepare] {name}: BiSSL → {work_dir}")
    options = {
        **inputs.common_options,
        **inputs.bissl_options,
        "model.pretext.backbone_checkpoint": str(inputs.backbone),
        "model.pretext.head_checkpoint": str(inputs.head),
        "model.task.head_checkpoint": str(task_head),
        **overrides,
    }
    run_stage(inputs.bissl_config, work_dir, options)
    exported = _lower_backbone(work_dir)
    if exported is None:
        raise FileNotFoundError(f"BiSSL finished without exporting a lower backbone in {work_dir}")
    return exported, work_dir


def _single_level(name: str, inputs: ArmInputs, root: Path, log: Callable[[str], None]) -> Path:
    """Run the weighted-sum or data-mix stage of arm ``name`` once; its exported backbone."""
    ws_overrides = weighted_sum_overrides(name)
    kind = "data_mix" if ws_overrides is None else "weighted_sum"
    flag = "--" + _SINGLE_LEVEL[kind].replace("_", "-")
    config = getattr(inputs, _SINGLE_LEVEL[kind])
    if (config is None and inputs.bissl_config is None) or inputs.head is None:
        raise ConfigError(
            f"arm {name!r} needs --head and --bissl-config (its config is derived from the "
            f"BiSSL config) or {flag} (a config inheriting the BiSSL config, e.g. "
            f"configs/classification/{kind}_simclr_resnet18_synthetic.py)"
        )
    work_dir = root / name
    exported = work_dir / "export" / f"{kind}_backbone.pth"
    if exported.is_file():
        log(f"[prepare] {name}: {kind} done before: {exported}")
        return exported
    if config is None:  # the BiSSL config with the baseline's differences (no file per data set)
        from bissl_dense.baselines.single_level import write_single_level_config

        config = write_single_level_config(
            kind, inputs.bissl_config, root / f"{kind}_{Path(inputs.bissl_config).name}"
        )
    options = {
        **inputs.common_options,
        **inputs.bissl_options,
        "model.pretext.backbone_checkpoint": str(inputs.backbone),
        "model.pretext.head_checkpoint": str(inputs.head),
    }
    if ws_overrides is not None:  # starts like BiSSL: from the warmed-up downstream head
        options["model.task.head_checkpoint"] = str(_warmup(inputs, root, log))
        options.update(ws_overrides)
    log(f"[prepare] {name}: {kind} → {work_dir}")
    run_stage(config, work_dir, options)
    if not exported.is_file():
        raise FileNotFoundError(f"the {kind} stage finished without writing '{exported}'")
    return exported


def _noisy_backbone(inputs: ArmInputs, root: Path, log: Callable[[str], None]) -> Path:
    """Perturb the pretext backbone once (NoisyTune, SPEC §6) and write it next to the arm."""
    import torch

    from bissl_dense.baselines.noisytune import noisytune_
    from bissl_dense.engine.runner import load_config
    from bissl_dense.fileio import atomic_torch_save
    from bissl_dense.pretext.backbones import build_backbone
    from bissl_dense.pretext.weights import load_backbone_into

    path = root / "noisytune" / f"backbone_scale-{inputs.noisytune_scale:g}.pth"
    if path.is_file():
        log(f"[prepare] noisytune: perturbed backbone made before: {path}")
        return path
    cfg = load_config(inputs.finetune_config, {**inputs.common_options, **inputs.finetune_options})
    backbone, _ = build_backbone(**dict(cfg.model.get("backbone") or {}))
    load_backbone_into(backbone, inputs.backbone)
    generator = torch.Generator().manual_seed(inputs.noisytune_seed)
    noisytune_(backbone, inputs.noisytune_scale, generator)
    atomic_torch_save({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, path)
    log(f"[prepare] noisytune: backbone perturbed (scale {inputs.noisytune_scale:g}) → {path}")
    return path


def prepare_arm(
    name: str, inputs: ArmInputs, root: str | Path, log: Callable[[str], None] = print_line
) -> PreparedArm:
    """Run the arm's preparation under ``root`` (once) and return its fine-tuning overrides."""
    root = Path(root)
    options = {**inputs.common_options, **inputs.finetune_options}
    backbone = str(inputs.backbone)
    if (overrides := bissl_overrides(name)) is not None:
        lower, work_dir = _bissl(name, overrides, inputs, root, log)
        return PreparedArm(name, {**options, "model.backbone_checkpoint": str(lower)}, work_dir)
    if name == "ft":
        return PreparedArm(name, {**options, "model.backbone_checkpoint": backbone})
    if name == "random_init":
        return PreparedArm(name, {**options, "model.backbone_checkpoint": None})
    if name == "linear_probe":
        extra = {"model.backbone_checkpoint": backbone, "model.freeze_backbone": True}
        return PreparedArm(name, {**options, **extra})
    if name == "zero_head":
        extra = {"model.backbone_checkpoint": backbone, "model.zero_init_head": True}
        return PreparedArm(name, {**options, **extra})
    if name == "noisytune":
        noisy = _noisy_backbone(inputs, root, log)
        return PreparedArm(name, {**options, "model.backbone_checkpoint": str(noisy)})
    if name == "data_mix" or weighted_sum_overrides(name) is not None:
        exported = _single_level(name, inputs, root, log)
        return PreparedArm(name, {**options, "model.backbone_checkpoint": str(exported)})
    parse_arms(name)  # raises the clear error for unknown arms
    raise AssertionError(f"arm {name!r} has no preparation")  # pragma: no cover

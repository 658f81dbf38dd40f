"""Semantic segmentation as a BiSSL downstream task (SPEC §2, §5): FCN-16 on mmseg.

The upper model is mmseg's ``EncoderDecoder`` (:mod:`bissl_dense.segmentation.model`); its
``backbone.*`` parameters are θ_U and correspond one to one to the pretext backbone's
torchvision names, although the segmenter runs res5 dilated (stride 1, dilation 2) and the pretext
network does not: only parameters are substituted, never strides. The upper loss takes the batch
mmseg's ``pseudo_collate`` makes (``{"inputs": [...], "data_samples": [...]}``), runs the model's
own data preprocessor and its ``loss`` mode, and sums the entries whose name contains ``loss``
(as mmengine's ``parse_losses``). With θ_L substituted the same forward runs through
``torch.func.functional_call``, so the implicit gradient flows through the whole dilated backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from bissl_dense.core import prefix_correspondence
from bissl_dense.errors import ConfigError, WeightsError
from bissl_dense.stage import DownstreamTask
from bissl_dense.stage.tasks import register_task

__all__ = [
    "load_head_from_checkpoint",
    "mm_upper_loss",
    "run_default_init",
    "segmentation_task",
    "start_from_pretext_backbone",
]


def _sum_losses(losses: Mapping[str, Any]) -> Tensor:
    """The total of the loss entries (mmengine's ``parse_losses`` rule: names with "loss")."""
    total: Tensor | None = None
    for name, value in losses.items():
        if "loss" not in name:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            total = item.mean() if total is None else total + item.mean()
    if total is None:
        raise RuntimeError(f"the model returned no loss entry; got {sorted(losses)}")
    return total


def mm_upper_loss(model: nn.Module):
    """``upper_loss(batch, backbone)`` for an mmengine ``BaseModel`` (mmseg or mmdet).

    ``batch`` is a ``pseudo_collate`` batch; the model's data preprocessor normalises, pads and
    moves it (deterministically: no batch augmentation), then ``mode="loss"`` gives the losses.
    """

    def upper_loss(batch: Mapping[str, Any], backbone: Mapping[str, Tensor] | None) -> Tensor:
        data = model.data_preprocessor(dict(batch), training=True)
        args = (data["inputs"], data["data_samples"])
        if backbone is None:
            losses = model(*args, mode="loss")
        else:
            losses = functional_call(model, dict(backbone), args, {"mode": "loss"}, strict=False)
        return _sum_losses(losses)

    return upper_loss


def run_default_init(model: nn.Module) -> None:
    """Run the model's own default initialisation (mmseg's / mmdet's ``init_cfg``s) now.

    The task builders call this before they copy θ_L in and load the warmed-up head, so that the
    parts no file provides get the framework's usual initialisation and the start state of SPEC
    §3 is final once the task is built. ``BaseModule.init_weights`` marks the model initialised
    (``is_init``), so a later ``init_weights()`` call (mmengine's ``Runner.train()``) leaves it
    alone; :meth:`~bissl_dense.engine.bissl_loop.BiSSLModel.init_weights` does nothing anyway.
    """
    init_weights = getattr(model, "init_weights", None)
    if callable(init_weights) and not getattr(model, "is_init", False):
        init_weights()


def start_from_pretext_backbone(
    lower_backbone: nn.Module, upper_model: nn.Module, correspondence: Mapping[str, str]
) -> None:
    """θ_U := θ_L, parameters and BatchNorm buffers (SPEC §3: both start at the pretext backbone).

    Buffers follow the parameters' mapping module by module (``bn1.running_mean`` goes where
    ``bn1.weight`` goes).
    """
    module_map = {}
    for lower, upper in correspondence.items():
        module_map[lower.rsplit(".", 1)[0]] = upper.rsplit(".", 1)[0]
    upper_state = upper_model.state_dict()
    missing = []
    with torch.no_grad():
        for name, value in lower_backbone.state_dict().items():
            module, leaf = name.rsplit(".", 1) if "." in name else ("", name)
            if module not in module_map:
                missing.append(name)
                continue
            target = f"{module_map[module]}.{leaf}"
            if target not in upper_state or upper_state[target].shape != value.shape:
                missing.append(f"{name} -> {target}")
                continue
            upper_state[target].copy_(value)
    if missing:
        raise ConfigError(
            "the downstream model's backbone does not match the pretext backbone; entries "
            f"without a counterpart: {missing[:8]} ({len(missing)} in all)"
        )


def load_head_from_checkpoint(
    model: nn.Module, path: str | Path, prefixes: tuple[str, ...]
) -> None:
    """Load the ``prefixes`` entries of a warm-up run's checkpoint (``weights_only=True``).

    The head warm-up (SPEC §1 step 2) is an ordinary mmseg/mmdet run with a frozen backbone; its
    checkpoint (``state_dict``) holds the whole model, of which the head entries are taken.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"head checkpoint '{path}' does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"head checkpoint '{path}' holds no state dict")
    own = model.state_dict()
    wanted = {k for k in own if k.startswith(prefixes)}
    found = {k: v for k, v in state.items() if k.startswith(prefixes)}
    problems = sorted(wanted ^ set(found)) + sorted(
        k for k in wanted & set(found) if tuple(found[k].shape) != tuple(own[k].shape)
    )
    if problems:
        raise WeightsError(
            f"head checkpoint '{path}' does not fit this model's {list(prefixes)} entries "
            f"(number of classes? another head?): {problems[:8]} ({len(problems)} in all); "
            "it must be the checkpoint of the head warm-up run of this config"
        )
    model.load_state_dict(found, strict=False)


@register_task("SegmentationTask")
def segmentation_task(
    lower_backbone: nn.Module,
    segmentor: Mapping[str, Any],
    head_checkpoint: str | None = None,
) -> DownstreamTask:
    """FCN-16 (mmseg ``EncoderDecoder``) as BiSSL's upper model.

    Args:
        lower_backbone: the pretext backbone (torchvision ResNet-50), whose weights initialise
            ``backbone.*``.
        segmentor: the mmseg model config (``configs/segmentation/_base_/models``); its backbone
            must not be frozen.
        head_checkpoint: the head warm-up run's checkpoint; ``decode_head.*`` (and
            ``auxiliary_head.*``) are taken from it.
    """
    from bissl_dense.segmentation.model import backbone_mismatches, build_segmentor

    backbone_cfg = segmentor.get("backbone", {})
    if segmentor.get("pretrained") or backbone_cfg.get("init_cfg"):
        raise ConfigError(
            "model.task.segmentor (its backbone) init_cfg="
            f"{backbone_cfg.get('init_cfg') or segmentor.get('pretrained')!r}: the BiSSL stage "
            "initialises the backbone from the pretext backbone; set init_cfg=None"
        )
    model = build_segmentor(segmentor)
    mismatches = backbone_mismatches(lower_backbone, model)
    if mismatches:
        raise ConfigError(
            "the segmenter's backbone does not correspond to the pretext backbone one to one "
            f"(model.task.segmentor.backbone must be mmseg's plain ResNet-50): {mismatches[:8]}"
        )
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise ConfigError(
            f"model.task.segmentor has frozen parameters ({frozen[:3]} ...): BiSSL trains the "
            "whole backbone; set backbone.frozen_stages=-1 and norm_eval=False"
        )
    correspondence = prefix_correspondence(lower_backbone, "backbone.")
    # mmseg's initialisation first (conv_seg ~ N(0, 0.01) ...), then the files on top of it
    run_default_init(model)
    start_from_pretext_backbone(lower_backbone, model, correspondence)
    if head_checkpoint:
        load_head_from_checkpoint(model, head_checkpoint, ("decode_head.", "auxiliary_head."))
    return DownstreamTask(
        model=model, upper_loss=mm_upper_loss(model), correspondence=correspondence
    )

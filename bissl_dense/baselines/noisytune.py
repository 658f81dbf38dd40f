"""NoisyTune and the zero-initialised head: two baselines of the paper's Table 3 (SPEC §6).

NoisyTune (Wu et al., "NoisyTune: A Little Noise Can Help You Finetune Pretrained Language Models
Better", ACL 2022, eq. 1) perturbs each pretrained parameter tensor W before fine-tuning:

    W̃ = W + U(−λ/2, λ/2) · std(W)

with independent uniform noise per element and λ the noise intensity (0.15 in their experiments
and in BiSSL's App. B.9.2). std(W) is the tensor's sample standard deviation (``torch.std``,
ddof=1, as in the NoisyTune authors' published snippet). BiSSL's App. B.9.2 calls the noise
"Gaussian", but the method it cites and the project's spec (SPEC §6) use uniform noise, as here.

Only parameters are perturbed, not buffers (BatchNorm running statistics). A tensor with a
single element has no standard deviation and is left as it is; a constant tensor (std 0, e.g.
a freshly initialised BatchNorm weight) gets zero noise, as the formula says.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["noisytune_", "zero_init_head_"]


@torch.no_grad()
def noisytune_(
    model: nn.Module, scale: float = 0.15, generator: torch.Generator | None = None
) -> dict[str, float]:
    """Add NoisyTune noise to every parameter of ``model`` in place (see the module docstring).

    Returns the standard deviation used for each perturbed parameter (by name); skipped
    single-element tensors are absent. ``generator`` (a CPU generator) makes the noise
    reproducible; the noise is drawn on the CPU and moved to each parameter's device.
    """
    if scale < 0:
        raise ValueError(f"NoisyTune scale must be >= 0, got {scale}")
    stds = {}
    for name, parameter in model.named_parameters():
        if parameter.numel() < 2:
            continue
        std = parameter.detach().float().std()
        uniform = torch.rand(parameter.shape, generator=generator, dtype=torch.float32)
        noise = (uniform - 0.5) * (scale * std.cpu())
        parameter.add_(noise.to(device=parameter.device, dtype=parameter.dtype))
        stds[name] = float(std)
    return stds


@torch.no_grad()
def zero_init_head_(head: nn.Module) -> nn.Module:
    """Set every parameter of ``head`` (typically the downstream ``nn.Linear``) to zero.

    The "fine-tuning with a zero-initialised head" baseline (paper App. B.9.1): the backbone
    receives no gradient on the first step (the head's weight is zero), the head does.
    """
    parameters = list(head.parameters())
    if not parameters:
        raise ValueError(f"{type(head).__name__} has no parameters to zero")
    for parameter in parameters:
        parameter.zero_()
    return head

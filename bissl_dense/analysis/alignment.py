"""Alignment analyses of backbones before and after fine-tuning (SPEC §7, paper §5, App. B.10).

The paper measures how far fine-tuning moves a backbone: the cosine similarity (CS) between the
flattened parameters of a backbone and of its fine-tuned version (App. B.10.1, eq. 12), and the
average CS between their output features on the downstream test set (eq. 13), for the pretext
backbone and for the BiSSL backbone. The pretext and BiSSL backbones never saw the downstream
data, so their BatchNorm running statistics are re-estimated on downstream training batches
first (``reestimate_batchnorm``). t-SNE embeddings of the test features (App. B.10.2) are drawn
by ``bissl_dense.reports.plots.plot_tsne``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "extract_features",
    "feature_cosine_similarity",
    "parameter_cosine_similarity",
    "reestimate_batchnorm",
    "tsne_embedding",
]

TensorsLike = nn.Module | Mapping[str, torch.Tensor]
Forward = Callable[[nn.Module, Any], Any]


def _named_tensors(source: TensorsLike) -> dict[str, torch.Tensor]:
    """A module's parameters (not its buffers), or a mapping's floating-point tensors."""
    if isinstance(source, nn.Module):
        return {name: p.detach() for name, p in source.named_parameters()}
    return {name: t.detach() for name, t in source.items() if torch.is_floating_point(t)}


def _names_preview(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" … (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def parameter_cosine_similarity(a: TensorsLike, b: TensorsLike) -> float:
    """CS of the concatenation of all parameters of ``a`` and of ``b`` (paper eq. 12).

    ``a`` and ``b`` are modules (their parameters are compared, not BatchNorm running statistics)
    or state-dict-like mappings (their floating-point tensors are compared: pass parameters only
    if running statistics should not count). Both must have the same names and shapes; a
    mismatch is an error naming the keys. Computed in float64.
    """
    tensors_a, tensors_b = _named_tensors(a), _named_tensors(b)
    only_a, only_b = tensors_a.keys() - tensors_b.keys(), tensors_b.keys() - tensors_a.keys()
    if only_a or only_b:
        raise ValueError(
            "the two backbones have different parameter names: only in the first: "
            f"[{_names_preview(only_a)}]; only in the second: [{_names_preview(only_b)}] "
            "(strip wrapper prefixes such as 'backbone.' or 'module.' first)"
        )
    if not tensors_a:
        raise ValueError("no parameters to compare")
    dot = norm_a = norm_b = torch.zeros((), dtype=torch.float64)
    for name, tensor_a in tensors_a.items():
        tensor_b = tensors_b[name]
        if tensor_a.shape != tensor_b.shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(tensor_a.shape)} in the first backbone and "
                f"{tuple(tensor_b.shape)} in the second"
            )
        x = tensor_a.to(device="cpu", dtype=torch.float64)
        y = tensor_b.to(device="cpu", dtype=torch.float64)
        dot = dot + (x * y).sum()
        norm_a = norm_a + (x * x).sum()
        norm_b = norm_b + (y * y).sum()
    if norm_a == 0 or norm_b == 0:
        raise ValueError("cosine similarity is undefined: one backbone's parameters are all zero")
    return float(dot / (norm_a.sqrt() * norm_b.sqrt()))


def feature_cosine_similarity(
    features_a: torch.Tensor, features_b: torch.Tensor, reduction: str = "mean"
) -> float:
    """CS between two backbones' features of the same samples (rows), shape (n, ...).

    ``reduction="mean"`` is the paper's eq. 13: the CS of each sample's two feature vectors,
    averaged over the test set. ``"flatten"`` is the CS of the two whole flattened feature
    matrices (dominated by the samples with the largest features). A sample whose feature is
    zero in either backbone contributes CS 0 (``torch.nn.functional.cosine_similarity``'s eps).
    """
    if features_a.shape != features_b.shape:
        raise ValueError(
            f"features of the two backbones differ in shape: {tuple(features_a.shape)} vs "
            f"{tuple(features_b.shape)} (same samples, same order, same layer?)"
        )
    if features_a.ndim < 2 or features_a.shape[0] == 0:
        raise ValueError(f"expected features of shape (n > 0, ...), got {tuple(features_a.shape)}")
    a = features_a.detach().to(device="cpu", dtype=torch.float64).flatten(1)
    b = features_b.detach().to(device="cpu", dtype=torch.float64).flatten(1)
    if reduction == "mean":
        return float(nn.functional.cosine_similarity(a, b, dim=1).mean())
    if reduction == "flatten":
        return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    raise ValueError(f"reduction must be 'mean' (the paper's) or 'flatten', got {reduction!r}")


def _default_forward(device: torch.device | str | None) -> Forward:
    def forward(model: nn.Module, batch: Any) -> Any:
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        if device is not None:
            inputs = inputs.to(device)
        return model(inputs)

    return forward


def reestimate_batchnorm(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: int | None = None,
    forward: Forward | None = None,
    device: torch.device | str | None = None,
) -> int:
    """Recompute every BatchNorm's running statistics on ``batches``; return how many were used.

    Each BatchNorm's running mean/var are reset and replaced by the cumulative average over the
    batches (momentum=None: every batch weighs the same, whatever came before), which is what
    the paper does before measuring features (App. B.10.1). Nothing else changes: parameters,
    other buffers, momenta and every module's train/eval flag are as before; the other layers
    run in eval mode meanwhile (dropout off) and no gradients are computed. ``num_batches_tracked``
    ends equal to the number of batches. If ``forward`` raises, the old statistics are restored.

    ``batches`` yields inputs or (inputs, labels); ``forward(model, batch)`` overrides how a
    batch is fed (default ``model(inputs.to(device))``). SyncBatchNorm needs an initialised
    process group in train mode: convert it to BatchNorm for a single-process analysis.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        raise ValueError("the model has no BatchNorm layer that tracks running statistics")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    forward = forward or _default_forward(device)
    training = {module: module.training for module in model.modules()}
    momenta = {norm: norm.momentum for norm in norms}
    saved = {
        norm: (
            norm.running_mean.clone(),
            norm.running_var.clone(),
            norm.num_batches_tracked.clone(),
        )
        for norm in norms
    }
    used = 0
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        with torch.no_grad():
            for batch in batches:
                if num_batches is not None and used >= num_batches:
                    break
                forward(model, batch)
                used += 1
        if used == 0:
            raise ValueError("no batches to re-estimate the BatchNorm statistics on")
    except BaseException:
        for norm, (mean, var, count) in saved.items():
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.num_batches_tracked.copy_(count)
        raise
    finally:
        for norm, momentum in momenta.items():
            norm.momentum = momentum
        for module, flag in training.items():
            module.training = flag
    return used


def extract_features(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Forward | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's outputs (eval mode, no gradients) for all batches, flattened to (n, d), on CPU.

    Batches of (inputs, labels) also return the concatenated labels (for t-SNE colours);
    batches of bare inputs return ``None`` for them. The train/eval flags are restored.
    """
    forward = forward or _default_forward(device)
    training = {module: module.training for module in model.modules()}
    features, labels = [], []
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                features.append(forward(model, batch).detach().flatten(1).cpu())
                if isinstance(batch, list | tuple) and len(batch) > 1:
                    labels.append(torch.as_tensor(batch[1]).cpu())
    finally:
        for module, flag in training.items():
            module.training = flag
    if not features:
        raise ValueError("no batches to extract features from")
    return torch.cat(features), (torch.cat(labels) if labels else None)


def tsne_embedding(
    features: torch.Tensor | np.ndarray,
    seed: int = 0,
    perplexity: float = 30.0,
    max_iter: int = 1000,
) -> np.ndarray:
    """2-D t-SNE of (n, d) features with scikit-learn, reproducible for a fixed ``seed``.

    PCA initialisation (stable layouts across runs) and scikit-learn's automatic learning rate.
    t-SNE needs perplexity < n: for small sets the perplexity is lowered to (n − 1) / 3.
    """
    from sklearn.manifold import TSNE

    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features
    array = np.asarray(array, dtype=np.float64).reshape(len(array), -1)
    if len(array) < 4:
        raise ValueError(f"t-SNE needs at least 4 samples, got {len(array)}")
    perplexity = min(perplexity, (len(array) - 1) / 3)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        max_iter=max_iter,
        random_state=seed,
    )
    return tsne.fit_transform(array)

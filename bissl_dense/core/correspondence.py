"""The correspondence between the lower (pretext) and upper (downstream) backbone parameters.

BiSSL keeps the backbone twice (SPEC §2). The two copies live in different models whose parameter
names differ: a detector keeps res5 in its RoI head
(``layer4.*`` ↔ ``roi_head.shared_head.layer4.*``, SPEC §5), a segmenter prefixes ``backbone.``.
A task adapter states the mapping explicitly; this module checks it once, loudly, before any
training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from torch import nn

__all__ = ["BackboneCorrespondence", "CorrespondenceError", "prefix_correspondence"]


class CorrespondenceError(ValueError):
    """The lower→upper backbone parameter mapping is incomplete, ambiguous or mis-shaped."""


class BackboneCorrespondence:
    """A checked one-to-one map from lower backbone parameter names to upper model parameter names.

    Args:
        lower_backbone: the module whose parameters are θ_L (names are relative to it).
        upper_model: the downstream model that holds θ_U and the downstream head φ_D.
        mapping: lower backbone parameter name → upper model parameter name. Every parameter of
            ``lower_backbone`` must appear exactly once, every target must exist in
            ``upper_model``, no target may repeat, and shapes must agree.

    Raises:
        CorrespondenceError: listing every offending name, grouped by the kind of fault.
    """

    def __init__(
        self, lower_backbone: nn.Module, upper_model: nn.Module, mapping: Mapping[str, str]
    ):
        lower = dict(lower_backbone.named_parameters())
        upper = dict(upper_model.named_parameters())
        problems: list[str] = []

        unmapped = sorted(set(lower) - set(mapping))
        if unmapped:
            problems.append(f"lower backbone parameters with no upper counterpart: {unmapped}")
        unknown_lower = sorted(set(mapping) - set(lower))
        if unknown_lower:
            problems.append(f"mapped names that are not lower backbone parameters: {unknown_lower}")
        unknown_upper = sorted(u for u in mapping.values() if u not in upper)
        if unknown_upper:
            problems.append(f"targets that are not parameters of the upper model: {unknown_upper}")
        repeated = sorted(u for u, n in Counter(mapping.values()).items() if n > 1)
        if repeated:
            problems.append(f"upper parameters targeted more than once: {repeated}")
        mis_shaped = sorted(
            f"{name} {tuple(lower[name].shape)} -> {target} {tuple(upper[target].shape)}"
            for name, target in mapping.items()
            if name in lower and target in upper and lower[name].shape != upper[target].shape
        )
        if mis_shaped:
            problems.append(f"shape mismatches: {mis_shaped}")
        if problems:
            raise CorrespondenceError(
                "invalid lower→upper backbone correspondence ("
                f"{len(lower)} lower backbone parameters, {len(mapping)} mapped):\n  - "
                + "\n  - ".join(problems)
                + "\nFix the task adapter's mapping so that every backbone tensor is mapped once."
            )
        # Keep the lower backbone's own parameter order: it fixes the order of the CG vectors.
        self.lower_names: list[str] = list(lower)
        self.upper_names: list[str] = [mapping[name] for name in self.lower_names]

    def __len__(self) -> int:
        return len(self.lower_names)

    def items(self) -> list[tuple[str, str]]:
        return list(zip(self.lower_names, self.upper_names, strict=True))


def prefix_correspondence(
    lower_backbone: nn.Module, prefixes: Mapping[str, str] | str = ""
) -> dict[str, str]:
    """Build a mapping by prefix rewriting lower names.

    Example: ``{"layer4.": "roi_head.shared_head.layer4.", "": "backbone."}``.

    The longest matching lower prefix wins; a plain string is one prefix prepended to every name.
    """
    rules = {"": prefixes} if isinstance(prefixes, str) else dict(prefixes)
    ordered = sorted(rules.items(), key=lambda kv: len(kv[0]), reverse=True)
    mapping = {}
    for name, _ in lower_backbone.named_parameters():
        for lower_prefix, upper_prefix in ordered:
            if name.startswith(lower_prefix):
                mapping[name] = upper_prefix + name[len(lower_prefix) :]
                break
    return mapping

"""Reading and writing pretext weights in the published BiSSL file formats (SPEC §4).

The authors publish, per pretext run ``<id>``:

* ``Pretext_<task>_arch-<arch>_backbone_id-<id>.pth``: a ResNet state dict with
  torchvision/timm names and no ``fc.*`` keys;
* ``Pretext_<task>_arch-<arch>_head_id-<id>.pth``: the pretext head's state dict, the projector
  under ``projector.`` and (BYOL) the predictor under ``predictor.``;
* ``Pretext_<task>_arch-<arch>_config_id-<id>.json``: the run's configuration.

:func:`load_backbone_state` also reads plain torchvision/timm state dicts, checkpoints that wrap
them (``state_dict``/``model`` entries, ``module.``/``backbone.`` prefixes, mmengine checkpoints)
and ``.safetensors`` files. Every ``.pth`` is read with ``torch.load(weights_only=True)``: a file
that needs arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bissl_dense.errors import WeightsError
from bissl_dense.fileio import atomic_torch_save, atomic_write_text

__all__ = [
    "IncompatibleBackboneKeys",
    "bissl_file_names",
    "export_backbone",
    "export_bissl",
    "export_pretext",
    "load_backbone_into",
    "load_backbone_state",
    "load_pretext_head",
    "pretext_file_names",
    "read_pretext_config",
    "split_head_state",
]

PathLike = str | os.PathLike[str]

# Entries under which checkpoints commonly nest the model's state dict.
_WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "module", "backbone", "model_state_dict")
# Prefixes tried, in order, when locating the ResNet inside a larger state dict.
_PREFERRED_PREFIXES: tuple[str, ...] = ("", "module.", "backbone.", "module.backbone.", "model.")
_RESNET_MARKERS: tuple[str, ...] = ("conv1.weight", "layer1.0.conv1.weight")
_MAX_LISTED_KEYS = 12


class WeightsFileNotFoundError(WeightsError, FileNotFoundError):
    """A weight or config file that does not exist (still a ``FileNotFoundError``)."""


def _check_name_part(kind: str, value: str) -> None:
    if not value or any(ch in value for ch in "/\\") or value.strip() != value:
        raise ValueError(f"{kind} {value!r} must be a non-empty name without slashes or spaces.")


def pretext_file_names(task: str, arch: str, run_id: str) -> dict[str, str]:
    """File names of a published pretext run: keys ``backbone``, ``head`` and ``config``."""
    for kind, value in (("task", task), ("arch", arch), ("run_id", run_id)):
        _check_name_part(kind, value)
    stem = f"Pretext_{task}_arch-{arch}"
    return {
        "backbone": f"{stem}_backbone_id-{run_id}.pth",
        "head": f"{stem}_head_id-{run_id}.pth",
        "config": f"{stem}_config_id-{run_id}.json",
    }


def bissl_file_names(
    task: str, downstream: str, dataset: str, arch: str, run_id: str
) -> dict[str, str]:
    """File names of a published BiSSL run: keys ``lower_backbone`` and ``config``."""
    for kind, value in (
        ("task", task),
        ("downstream", downstream),
        ("dataset", dataset),
        ("arch", arch),
        ("run_id", run_id),
    ):
        _check_name_part(kind, value)
    stem = f"BiSSL_{task}_{downstream}_{dataset}_arch-{arch}"
    return {
        "lower_backbone": f"{stem}_lower_backbone_id-{run_id}.pth",
        "config": f"{stem}_config_id-{run_id}.json",
    }


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _tensor_state(state: Mapping[str, Any], what: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise TypeError(
                f"{what} must map str to Tensor; entry {key!r} holds {type(value).__name__}. "
                "Pass a module or its state_dict()."
            )
        out[key] = value.detach().cpu().contiguous().clone()
    return out


def export_pretext(
    out_dir: PathLike,
    backbone: nn.Module | Mapping[str, Tensor],
    head_state: Mapping[str, Tensor],
    config: Mapping[str, Any],
    task: str,
    arch: str,
    run_id: str,
) -> dict[str, Path]:
    """Write the three published pretext files atomically; returns their paths by kind.

    The backbone's ``fc.*`` entries (if any) and a DDP ``module.`` prefix are dropped so that the
    file holds the bare backbone, as the published files do. Tensors are saved on the CPU.
    """
    names = pretext_file_names(task, arch, run_id)
    out = Path(out_dir)
    backbone_state = backbone.state_dict() if isinstance(backbone, nn.Module) else backbone
    if backbone_state and all(k.startswith("module.") for k in backbone_state):
        backbone_state = _strip_prefix(backbone_state, "module.")  # a DDP-wrapped backbone
    backbone_state = {k: v for k, v in backbone_state.items() if not k.startswith("fc.")}
    tensors_backbone = _tensor_state(backbone_state, "backbone state")
    tensors_head = _tensor_state(head_state, "head_state")
    try:
        config_text = json.dumps(dict(config), sort_keys=True, indent=4)
    except TypeError as err:
        raise TypeError(
            f"export_pretext: config must be JSON-serialisable (plain str/int/float/bool/list/"
            f"dict values): {err}"
        ) from err

    paths = {kind: out / name for kind, name in names.items()}
    atomic_torch_save(tensors_backbone, paths["backbone"])
    atomic_torch_save(tensors_head, paths["head"])
    atomic_write_text(paths["config"], config_text + "\n")
    return paths


def export_bissl(
    out_dir: PathLike,
    lower_backbone: nn.Module | Mapping[str, Tensor],
    config: Mapping[str, Any],
    task: str,
    downstream: str,
    dataset: str,
    arch: str,
    run_id: str,
) -> dict[str, Path]:
    """Write BiSSL's output in the published format; returns the paths by kind.

    ``BiSSL_<task>_<downstream>_<dataset>_arch-<arch>_lower_backbone_id-<id>.pth`` holds the lower
    backbone θ_L with torchvision names (no ``fc.*``), readable by :func:`load_backbone_state`;
    ``..._config_id-<id>.json`` the run's settings.
    """
    names = bissl_file_names(task, downstream, dataset, arch, run_id)
    paths = {kind: Path(out_dir) / name for kind, name in names.items()}
    export_backbone(
        lower_backbone, config, paths["lower_backbone"], paths["config"], "export_bissl"
    )
    return paths


def export_backbone(
    backbone: nn.Module | Mapping[str, Tensor],
    config: Mapping[str, Any],
    backbone_path: PathLike,
    config_path: PathLike,
    what: str = "export_backbone",
) -> None:
    """Write a backbone (torchvision names, ``fc.*`` dropped, CPU tensors) and its run's JSON
    config, each atomically; the config first, so that the backbone file's presence means the
    export is complete (what the resumable stages check). ``what`` names the caller in errors."""
    state = backbone.state_dict() if isinstance(backbone, nn.Module) else backbone
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    tensors = _tensor_state(state, f"{what}: backbone state")
    try:
        config_text = json.dumps(dict(config), sort_keys=True, indent=4)
    except TypeError as err:
        raise TypeError(f"{what}: config must be JSON-serialisable: {err}") from err
    atomic_write_text(config_path, config_text + "\n")
    atomic_torch_save(tensors, backbone_path)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise WeightsFileNotFoundError(f"Weight file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - safetensors is a declared dependency
            raise ImportError(f"Reading {path} needs the 'safetensors' package.") from err
        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"Refused to load {str(path)!r}: it contains Python objects other than tensors and "
            "plain containers, and loading it would execute arbitrary code (torch.load with "
            "weights_only=True rejected it). Re-save only the weights, e.g. "
            "torch.save(model.state_dict(), path), or convert the file to .safetensors. "
            f"Details: {err}"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise WeightsError(
            f"Could not read {str(path)!r} as a PyTorch weight file ({err}); check that it is a "
            "complete .pth/.pt file or a .safetensors file."
        ) from err


def _has_tensors(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, Tensor) for v in obj.values())


def _unwrap_state(obj: Any, source: str) -> dict[str, Tensor]:
    """Descend through checkpoint wrappers (``state_dict``, ``model``...) to the weights.

    A state dict's own keys are dotted names holding tensors, so an entry named like a wrapper
    that holds a mapping is always a wrapper, even next to tensor entries (e.g. ``epoch``).
    """
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not _has_tensors(obj):
        keys = list(obj)[:_MAX_LISTED_KEYS] if isinstance(obj, Mapping) else []
        raise WeightsError(
            f"{source}: no state dict found (top-level type {type(obj).__name__}, keys {keys}). "
            f"Expected a mapping of parameter names to tensors, possibly nested under one of "
            f"{list(_WRAPPER_KEYS)}."
        )
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _resnet_prefix(state: Mapping[str, Tensor], source: str) -> str | None:
    """The key prefix under which a ResNet lives in ``state`` (None if no ResNet is found)."""
    candidates = sorted(
        key[: -len(_RESNET_MARKERS[0])]
        for key in state
        if key.endswith(_RESNET_MARKERS[0])
        and key[: -len(_RESNET_MARKERS[0])] + _RESNET_MARKERS[1] in state
    )
    if not candidates:
        return None
    for prefix in _PREFERRED_PREFIXES:
        if prefix in candidates:
            return prefix
    if len(candidates) == 1:
        return candidates[0]
    raise WeightsError(
        f"{source}: several ResNets found under the prefixes {candidates}; pass prefix=... to "
        "choose which one is the backbone."
    )


def load_backbone_state(
    path: PathLike | Mapping[str, Any], prefix: str | None = None
) -> dict[str, Tensor]:
    """Read a backbone state dict with torchvision/timm ResNet names from a file (or mapping).

    Handles the published backbone files, plain torchvision/timm state dicts, checkpoints that
    nest the weights under ``state_dict``/``model`` (mmengine, Lightning...), ``module.``
    (DDP) and ``backbone.`` prefixes, and ``.safetensors``. The ``fc.*`` classifier is dropped.
    ``prefix`` selects the part of the state dict explicitly (e.g. ``"encoder_q."``); by default
    the prefix of the ResNet is detected from its ``conv1.weight``/``layer1.0.conv1.weight`` keys,
    and a non-ResNet state dict is returned with only ``module.`` stripped.
    """
    if isinstance(path, Mapping):
        source, raw = "state dict", path
    else:
        source = f"Weight file {str(path)!r}"
        raw = _load_file(Path(path))
    state = _unwrap_state(raw, source)
    if prefix is None:
        prefix = _resnet_prefix(state, source)
        if prefix is None:
            prefix = "module." if state and all(k.startswith("module.") for k in state) else ""
    selected = _strip_prefix(state, prefix)
    if not selected:
        raise WeightsError(f"{source}: no key starts with the prefix {prefix!r}.")
    return {k: v for k, v in selected.items() if not k.startswith("fc.")}


class IncompatibleBackboneKeys(NamedTuple):
    """Keys that did not match when loading non-strictly (strict loading raises instead)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _listed(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = f", ... ({len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"[{shown}{more}]"


def load_backbone_into(
    backbone: nn.Module,
    path_or_state: PathLike | Mapping[str, Any],
    strict: bool = True,
    ignore_prefixes: tuple[str, ...] = ("fc.",),
) -> IncompatibleBackboneKeys:
    """Load backbone weights into ``backbone``, reporting every mismatch by name.

    Keys of ``backbone`` under ``ignore_prefixes`` (its classifier ``fc.`` by default, which no
    backbone file holds) are never required. BatchNorm ``num_batches_tracked`` counters missing
    from the file (timm's hub files omit them) keep the module's values. Shape mismatches always
    raise; with ``strict=True`` missing or unexpected keys raise a ``ValueError`` that names the
    file and lists them; with ``strict=False`` they are returned.
    """
    if isinstance(path_or_state, Mapping):
        source = "the given state dict"
    else:
        source = repr(str(path_or_state))
    state = load_backbone_state(path_or_state)
    target = backbone.state_dict()

    def ignored(key: str) -> bool:
        return any(key.startswith(p) for p in ignore_prefixes)

    missing = [
        k
        for k in target
        if k not in state and not ignored(k) and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"Cannot load backbone weights from {source} into {type(backbone).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listed(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_listed(mismatched)}")
        lines.append(
            "  Check that the file was trained with the same architecture (arch, cifar_stem) and "
            "holds torchvision/timm ResNet names; pass load_backbone_state(path, prefix=...) if "
            "the backbone sits under another prefix, or strict=False to load the matching keys."
        )
        raise WeightsError("\n".join(lines))
    to_load = {k: v for k, v in state.items() if k in target}
    backbone.load_state_dict(to_load, strict=False)
    return IncompatibleBackboneKeys(missing_keys=missing, unexpected_keys=unexpected)


def load_pretext_head(path: PathLike) -> dict[str, Tensor]:
    """Read a pretext head state dict (``projector.*``, and ``predictor.*`` for BYOL)."""
    source = f"Head file {str(path)!r}"
    state = _unwrap_state(_load_file(Path(path)), source)
    if state and all(k.startswith("module.") for k in state):
        state = _strip_prefix(state, "module.")
    return state


def split_head_state(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Group a head state dict by its first key component: ``{"projector": {"0.weight": ...}}``."""
    groups: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        part, sep, rest = key.partition(".")
        if not sep:
            raise WeightsError(
                f"Head state key {key!r} has no module prefix; expected e.g. 'projector.0.weight'."
            )
        groups.setdefault(part, {})[rest] = value
    return groups


def read_pretext_config(path: PathLike) -> dict[str, Any]:
    """Read a published pretext (or BiSSL) JSON config; a clear error if it is invalid."""
    file = Path(path)
    if not file.is_file():
        raise WeightsFileNotFoundError(f"Config file {str(file)!r} does not exist.")
    text = file.read_text(encoding="utf-8")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise WeightsError(
            f"Config file {str(file)!r} is not valid JSON: {err.msg} at line {err.lineno}, "
            f"column {err.colno}. Fix the file or re-export it with export_pretext."
        ) from err
    if not isinstance(config, dict):
        raise WeightsError(
            f"Config file {str(file)!r} must hold a JSON object, got {type(config).__name__}."
        )
    return config

"""detectron2's ``.pkl`` weight format, written and read without unpickling arbitrary objects.

detectron2's checkpointer reads a ``.pkl`` holding ``{"model": {name: numpy array}, "__author__":
str, "matching_heuristics": bool}`` (the format of its model zoo and of MoCo's
``convert-pretrain-to-detectron2.py``). We write exactly that, with the detector's full parameter
names and ``matching_heuristics: False`` so that nothing is matched by guesswork.

Reading: a ``.pkl`` is a Python pickle and ``pickle.load`` would execute whatever a crafted file
asks for. :func:`load_detectron2_pkl` uses a restricted unpickler that only resolves numpy's
array/dtype/scalar reconstructors and ``collections.OrderedDict``; dicts, lists, strings and
numbers are pickle opcodes and need no lookup. Anything else is refused with the name of the
object the file asked for. Our code never lets detectron2's own checkpointer unpickle a user's
``.pkl`` (see :func:`load_c4_weights`).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bissl_dense.detection.correspondence import torchvision_name
from bissl_dense.errors import WeightsError
from bissl_dense.fileio import atomic_write_bytes

__all__ = [
    "SAFE_PICKLE_GLOBALS",
    "load_c4_weights",
    "load_detectron2_pkl",
    "read_detectron2_state",
    "save_detectron2_pkl",
]

PathLike = str | os.PathLike[str]

SAFE_PICKLE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    (module, name)
    for core in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{core}.multiarray", "_reconstruct"),
        (f"{core}.multiarray", "scalar"),
        (f"{core}.numeric", "_frombuffer"),
    )
) | frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")})
"""The only globals a detectron2 ``.pkl`` may reference (numpy arrays, dtypes, scalars)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_PICKLE_GLOBALS or module == "numpy.dtypes":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def save_detectron2_pkl(
    state: Mapping[str, Tensor | np.ndarray], path: PathLike, author: str = "bissl"
) -> Path:
    """Write ``state`` (detector names → tensors) as a detectron2 ``.pkl``, atomically."""
    model = {
        key: (value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value))
        for key, value in state.items()
    }
    payload = {"model": model, "__author__": author, "matching_heuristics": False}
    path = Path(path)
    atomic_write_bytes(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def load_detectron2_pkl(path: PathLike) -> dict[str, np.ndarray]:
    """Read the ``model`` entry of a detectron2 ``.pkl`` with the restricted unpickler.

    Also accepts the Caffe2/Detectron1 layout (weights at the top level or under ``blobs``).

    Raises:
        WeightsError: the file is missing, is not a pickle, asks for any object other than numpy
            arrays and plain containers, or holds no arrays.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"Weight file {str(file)!r} does not exist.")
    try:
        data = _RestrictedUnpickler(io.BytesIO(file.read_bytes()), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"Refused to load {str(file)!r}: {err}. A detectron2 .pkl may hold only numpy arrays "
            "in plain dicts; loading other objects would execute code from the file. Re-export "
            "it with `bissl export`."
        ) from err
    except Exception as err:  # truncated file, not a pickle at all
        raise WeightsError(f"Could not read {str(file)!r} as a detectron2 .pkl: {err}") from err
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    elif isinstance(data, Mapping) and isinstance(data.get("blobs"), Mapping):
        data = data["blobs"]
    arrays = (
        {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
        if isinstance(data, Mapping)
        else {}
    )
    if not arrays:
        raise WeightsError(
            f"{str(file)!r} holds no numpy arrays under 'model' (top-level type "
            f"{type(data).__name__}); expected detectron2's {{'model': {{name: array}}}} format."
        )
    return arrays


def read_detectron2_state(path: PathLike) -> Mapping[str, Any]:
    """Weights with detectron2 names: a ``.pkl`` (restricted unpickler, numpy arrays) or a
    ``.pth`` detector checkpoint / state dict (``torch.load(weights_only=True)``, tensors)."""
    file = Path(path)
    if file.suffix == ".pkl":
        return load_detectron2_pkl(file)
    from bissl_dense.pretext.weights import load_backbone_state

    try:
        return load_backbone_state(file, prefix="")
    except ValueError as err:
        raise WeightsError(str(err)) from err


def load_c4_weights(model: nn.Module, path: PathLike) -> dict[str, list[str]]:
    """Load backbone + res5 weights from our ``.pkl`` (or a ``.pth`` state dict) into a C4 model.

    Every ``backbone.*`` and ``roi_heads.res5.*`` tensor of ``model`` must be in the file with its
    shape (``num_batches_tracked`` counters excepted); the RPN and box predictor keep their own
    initialisation. Returns ``{"loaded": [...], "not_in_file": [...]}`` (the latter: the heads).

    Raises:
        WeightsError: naming the missing, unexpected and mis-shaped keys.
    """
    file = Path(path)
    raw = read_detectron2_state(file)
    target = model.state_dict()
    shared = [
        k
        for k in target
        if torchvision_name(k) is not None and not k.endswith("num_batches_tracked")
    ]
    missing = [k for k in shared if k not in raw]
    unexpected = [k for k in raw if k not in target]
    mis_shaped = [
        f"{k}: file {tuple(np.shape(raw[k]))} vs model {tuple(target[k].shape)}"
        for k in raw
        if k in target and tuple(np.shape(raw[k])) != tuple(target[k].shape)
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"Cannot load {str(file)!r} into the C4 detector:"]
        for what, keys in (
            ("missing backbone/res5 keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mis_shaped),
        ):
            if keys:
                more = f" ... ({len(keys) - 12} more)" if len(keys) > 12 else ""
                lines.append(f"  {what} ({len(keys)}): {keys[:12]}{more}")
        lines.append(
            "  Convert a torchvision ResNet-50 with `bissl export BACKBONE --to detectron2 "
            "--out FILE.pkl`; the detector must be R50-C4 with NORM BN/SyncBN."
        )
        raise WeightsError("\n".join(lines))
    with torch.no_grad():
        for key, value in raw.items():
            tensor = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
            target[key].copy_(tensor.to(target[key].dtype))
    loaded = sorted(raw)
    return {"loaded": loaded, "not_in_file": sorted(set(target) - set(raw))}

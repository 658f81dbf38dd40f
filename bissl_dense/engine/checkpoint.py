"""Run checkpoints that load with ``torch.load(weights_only=True)`` and are written atomically.

Why (ENVIRONMENT.md, "Known problems"): since torch 2.6 ``torch.load`` defaults to
``weights_only=True``; mmengine 0.10.7 stores its message hub (``HistoryBuffer`` objects holding
numpy arrays, numpy scalars) in every checkpoint, so its own resume fails, and allow-listing
would require the builtin ``getattr``. The fix here is narrow: before a checkpoint is written,
every value that is not a tensor or a plain Python type is encoded into tensors and plain types
(tagged dicts); after a checkpoint is read, the tags are decoded back. Loading itself is left
to mmengine, i.e. to ``torch.load``'s default weights-only unpickler, so the run's own
checkpoints and files a user hands in (``load_from``) are both read without executing pickled
code. Nothing is allow-listed and the check is never switched off.

mmengine also writes checkpoints in place and deletes the outdated one *before* writing the new
one; a kill at the wrong moment leaves a truncated file behind the ``last_checkpoint`` pointer.
:class:`AtomicCheckpointHook` writes to a temporary name, renames, then updates the pointer
(itself written atomically), and only then deletes outdated checkpoints.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS

from bissl_dense.fileio import atomic_write_bytes, fsync_directory

TAG = "__bissl_encoded__"
"""Key marking a dict that stands for a non-plain object (see :func:`encode_state`)."""

_PLAIN_SCALARS = (bool, int, float, str, bytes, type(None))
_TORCH_PLAIN = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def _ndarray_to_tensor(array: np.ndarray, where: str) -> torch.Tensor:
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        raise TypeError(
            f"checkpoint entry {where}: numpy array of dtype {array.dtype} cannot be stored as a "
            "tensor; convert it to a list or a numeric array before saving"
        )
    return torch.from_numpy(np.ascontiguousarray(array)).clone()


def encode_state(value: Any, where: str = "checkpoint") -> Any:
    """Return ``value`` with every non-plain object replaced by tensors and plain types.

    Handled: tensors, ``bool/int/float/str/bytes/None``, ``torch.dtype/device/Size``, dict,
    ``OrderedDict`` (with its ``_metadata``), list, tuple, set, ``deque``, numpy arrays and
    scalars, mmengine ``HistoryBuffer``. Anything else raises ``TypeError`` naming its key, so
    an unloadable checkpoint is never written.
    """
    if isinstance(value, np.generic):  # before the scalars: np.float64 subclasses float
        return {TAG: "numpy_scalar", "value": value.item(), "dtype": value.dtype.str}
    if isinstance(value, _PLAIN_SCALARS) or isinstance(value, _TORCH_PLAIN):
        return value
    if isinstance(value, np.ndarray):
        return {TAG: "ndarray", "value": _ndarray_to_tensor(value, where)}
    if isinstance(value, HistoryBuffer):
        return {
            TAG: "history_buffer",
            "log_history": _ndarray_to_tensor(np.asarray(value._log_history), where),
            "count_history": _ndarray_to_tensor(np.asarray(value._count_history), where),
            "max_length": int(value.max_length),
        }
    if isinstance(value, dict):
        encoded = type(value)() if isinstance(value, OrderedDict) else {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise TypeError(f"checkpoint entry {where}: key {key!r} is not a plain type")
            encoded[key] = encode_state(item, f"{where}.{key}")
        metadata = getattr(value, "_metadata", None)
        if metadata is not None:  # module state dicts carry per-module versions
            encoded._metadata = encode_state(dict(metadata), f"{where}._metadata")  # type: ignore[attr-defined]
        return encoded
    if isinstance(value, list):
        return [encode_state(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(encode_state(item, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, (set, frozenset)):
        items = [encode_state(item, f"{where}{{}}") for item in value]
        return {TAG: type(value).__name__, "value": items}
    if isinstance(value, deque):
        items = [encode_state(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return {TAG: "deque", "value": items, "maxlen": value.maxlen}
    raise TypeError(
        f"checkpoint entry {where} has type {type(value).__module__}.{type(value).__qualname__}, "
        "which torch.load(weights_only=True) cannot read back; store tensors or plain Python "
        "values there"
    )


_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "numpy_scalar": lambda d: np.dtype(d["dtype"]).type(d["value"]),
    "ndarray": lambda d: d["value"].numpy(),
    "history_buffer": lambda d: HistoryBuffer(
        d["log_history"].numpy(), d["count_history"].numpy(), d["max_length"]
    ),
    "set": lambda d: set(d["value"]),
    "frozenset": lambda d: frozenset(d["value"]),
    "deque": lambda d: deque(d["value"], d["maxlen"]),
}


def decode_state(value: Any) -> Any:
    """Inverse of :func:`encode_state`; plain values pass through unchanged."""
    if isinstance(value, dict):
        decoded = type(value)() if isinstance(value, OrderedDict) else {}
        for key, item in value.items():
            decoded[key] = decode_state(item)
        metadata = getattr(value, "_metadata", None)
        if metadata is not None:
            decoded._metadata = metadata  # type: ignore[attr-defined]
        tag = decoded.get(TAG) if not isinstance(value, OrderedDict) else None
        if isinstance(tag, str):
            if tag not in _DECODERS:
                raise ValueError(f"unknown encoded checkpoint entry type {tag!r}")
            return _DECODERS[tag](decoded)
        return decoded
    if isinstance(value, list):
        return [decode_state(item) for item in value]
    if isinstance(value, tuple):
        return tuple(decode_state(item) for item in value)
    return value


def load_run_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :class:`AtomicCheckpointHook` (weights only) and decode it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    return decode_state(torch.load(path, map_location=map_location, weights_only=True))


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` with weights-only-loadable, atomically written files.

    Takes the same arguments as ``CheckpointHook``; writes to the local file system only.
    Priority stays ``VERY_LOW`` so per-step updates of other hooks (e.g. the BYOL target
    network, :class:`~bissl_dense.engine.hooks.PretextStepHook`) are in the saved state.
    """

    def before_train(self, runner: Any) -> None:
        super().before_train(runner)
        if not isinstance(self.file_backend, LocalBackend):
            raise ValueError(
                f"AtomicCheckpointHook writes to the local file system only, but out_dir "
                f"'{self.out_dir}' resolves to {type(self.file_backend).__name__}"
            )

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        for key in list(checkpoint):
            checkpoint[key] = encode_state(checkpoint[key], key)

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        for key in list(checkpoint):
            checkpoint[key] = decode_state(checkpoint[key])

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        out_dir = Path(self.out_dir)
        final_name = self.filename_tmpl.format(step)
        final_path = out_dir / final_name
        tmp_name = f".{final_name}.partial"

        outdated: list[int] = []
        if self.max_keep_ckpts > 0:
            kept = [s for s in self.keep_ckpt_ids if s != step] + [step]
            outdated = kept[: -self.max_keep_ckpts]
            self.keep_ckpt_ids = deque(kept[-self.max_keep_ckpts :], self.max_keep_ckpts)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        self.last_ckpt = str(final_path)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)

        runner.save_checkpoint(
            str(out_dir),
            tmp_name,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            **self.args,
        )
        if not is_main_process():
            return
        tmp_path = out_dir / tmp_name
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, final_path)
        fsync_directory(out_dir)
        # The pointer moves only once the file it names is complete.
        atomic_write_bytes(Path(runner.work_dir) / "last_checkpoint", str(final_path).encode())
        for old_step in outdated:
            (out_dir / self.filename_tmpl.format(old_step)).unlink(missing_ok=True)

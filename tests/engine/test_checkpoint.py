"""Checkpoint encoding: weights-only loadable, exact round trip, clear errors."""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict, deque

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from bissl_dense.engine.checkpoint import decode_state, encode_state
from bissl_dense.fileio import atomic_torch_save, atomic_write_bytes


def _weights_only_round_trip(obj: object) -> object:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _message_hub_state() -> dict:
    hub = MessageHub(name="test_checkpoint_hub")
    for step, loss in enumerate([4.5, 4.25, np.float32(3.75)]):
        hub.update_scalar("train/loss", loss, count=2)
        hub.update_scalar("train/lr", np.float64(0.1 * (step + 1)))
    hub.update_info("iter", 3)
    hub.update_info("best_score", np.float64(0.625))
    hub.update_info("keep_ckpt_ids", [1, 2])
    return hub.state_dict()


def test_raw_mmengine_message_hub_is_not_weights_only_loadable() -> None:
    """The problem being fixed (ENVIRONMENT.md): mmengine's state needs arbitrary unpickling."""
    with pytest.raises(pickle.UnpicklingError):
        _weights_only_round_trip(_message_hub_state())


def test_message_hub_round_trip_through_weights_only_load() -> None:
    state = _message_hub_state()
    restored = decode_state(_weights_only_round_trip(encode_state(state)))
    assert set(restored["log_scalars"]) == {"train/loss", "train/lr"}
    for key, buffer in state["log_scalars"].items():
        got = restored["log_scalars"][key]
        assert isinstance(got, HistoryBuffer)
        log, count = buffer.data
        got_log, got_count = got.data
        np.testing.assert_array_equal(got_log, log)
        np.testing.assert_array_equal(got_count, count)
        assert got_log.dtype == log.dtype and got.max_length == buffer.max_length
        assert got.mean() == buffer.mean()
    best = restored["runtime_info"]["best_score"]
    assert isinstance(best, np.float64) and best == np.float64(0.625)
    assert restored["runtime_info"]["iter"] == 3
    assert restored["runtime_info"]["keep_ckpt_ids"] == [1, 2]
    assert restored["resumed_keys"] == state["resumed_keys"]
    hub = MessageHub(name="test_checkpoint_hub_restored")
    hub.load_state_dict(restored)
    assert hub.get_scalar("train/loss").current() == pytest.approx(3.75)


def test_containers_and_scalars_round_trip() -> None:
    module_state = torch.nn.Linear(2, 3).state_dict()
    value = {
        "state": module_state,
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "bool_array": np.array([True, False]),
        "scalars": [np.int64(7), np.float32(0.5), np.bool_(True), 1, 2.5, "x", None],
        "tuple": (1, (2.0, "three")),
        "set": {1, 2, 3},
        "deque": deque([4, 5], maxlen=3),
        "dtype": torch.float16,
        "size": torch.Size([2, 3]),
    }
    restored = decode_state(_weights_only_round_trip(encode_state(value)))
    assert isinstance(restored["state"], OrderedDict)
    assert restored["state"]._metadata == module_state._metadata  # module versions survive
    for key in module_state:
        assert torch.equal(restored["state"][key], module_state[key])
    np.testing.assert_array_equal(restored["array"], value["array"])
    assert restored["array"].dtype == np.int16
    assert restored["bool_array"].dtype == np.bool_
    assert [type(v) for v in restored["scalars"]] == [type(v) for v in value["scalars"]]
    assert restored["scalars"] == value["scalars"]
    assert restored["tuple"] == (1, (2.0, "three"))
    assert restored["set"] == {1, 2, 3}
    assert restored["deque"] == deque([4, 5]) and restored["deque"].maxlen == 3
    assert restored["dtype"] is torch.float16 and restored["size"] == torch.Size([2, 3])


def test_unknown_object_is_refused_with_its_key() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"meta\.custom\.thing.*Opaque"):
        encode_state({"custom": {"thing": Opaque()}}, "meta")
    with pytest.raises(TypeError, match="dtype object"):
        encode_state({"a": np.array([object()])})


def test_atomic_writes_leave_old_file_on_failure(tmp_path) -> None:
    target = tmp_path / "sub" / "state.pth"
    atomic_torch_save({"w": torch.ones(2)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_torch_save({"w": torch.zeros(2), "x": Unsaveable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.pth"]  # no temp left
    atomic_write_bytes(tmp_path / "pointer", b"abc")
    assert (tmp_path / "pointer").read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "pointer").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

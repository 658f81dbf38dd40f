"""``bissl export``: a torchvision backbone → detectron2 ``.pkl`` that detectron2's own
checkpointer loads into the R50-C4 detector with every backbone and res5 tensor matched, and back
to torchvision names exactly; wrong files name their keys; a crafted ``.pkl`` is not executed."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet50

from bissl_dense.cli import main as bissl_main
from bissl_dense.detection.weights import load_detectron2_pkl, save_detectron2_pkl
from bissl_dense.errors import WeightsError
from tests.detection._d2 import TINY_CONFIG, require_detectron2


def _random_backbone_file(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    model = resnet50()
    model.fc = nn.Identity()
    with torch.no_grad():  # make the BatchNorm statistics distinguishable from their defaults
        for name, buf in model.named_buffers():
            if name.endswith("running_mean") or name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    state = model.state_dict()
    torch.save(state, path)
    return state


def test_export_loads_into_c4_with_every_tensor_and_round_trips(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    require_detectron2()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from bissl_dense.detection.config import load_config
    from bissl_dense.detection.correspondence import torchvision_name

    state = _random_backbone_file(tmp_path / "backbone.pth")
    pkl = tmp_path / "backbone_d2.pkl"
    assert (
        bissl_main(
            ["export", str(tmp_path / "backbone.pth"), "--to", "detectron2", "--out", str(pkl)]
        )
        == 0
    )
    raw = pickle.loads(pkl.read_bytes())
    assert raw["matching_heuristics"] is False and set(raw) == {
        "model",
        "__author__",
        "matching_heuristics",
    }
    assert all(isinstance(v, np.ndarray) for v in raw["model"].values())

    # detectron2's own checkpointer reads the file into the C4 detector
    cfg = load_config(str(TINY_CONFIG), ["MODEL.WEIGHTS", "random"])
    detector = build_model(cfg)
    incompatible = DetectionCheckpointer(detector)._load_model(
        DetectionCheckpointer(detector)._load_file(str(pkl))
    )
    shared = [k for k in detector.state_dict() if torchvision_name(k) is not None]
    assert len(shared) == 318
    assert not [k for k in incompatible.missing_keys if k in shared]
    assert not incompatible.unexpected_keys
    loaded = detector.state_dict()
    for key in shared:
        assert torch.equal(loaded[key], state[torchvision_name(key)]), key
    assert any(k.startswith("roi_heads.res5.") for k in shared)

    # back to torchvision names: exactly the original tensors
    back = tmp_path / "back.pth"
    assert bissl_main(["export", str(pkl), "--to", "torchvision", "--out", str(back)]) == 0
    restored = torch.load(back, weights_only=True)
    assert list(restored) == list(state)
    assert all(torch.equal(restored[k], state[k]) for k in state)


def test_wrong_file_names_missing_and_unexpected_keys(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    state = _random_backbone_file(tmp_path / "full.pth")
    broken = {k: v for k, v in state.items() if not k.startswith("layer3.5.")}
    broken["layer3.9.conv1.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    code = bissl_main(
        [
            "export",
            str(tmp_path / "broken.pth"),
            "--to",
            "detectron2",
            "--out",
            str(tmp_path / "x.pkl"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "missing keys (15; layer3.* (15))" in err and "layer3.5.bn1.weight" in err
    assert "unexpected keys" in err and "layer3.9.conv1.weight" in err
    assert not (tmp_path / "x.pkl").exists()

    # a detectron2 file without res5 cannot become a torchvision backbone
    d2 = {
        k: v
        for k, v in pickle.loads(_pkl_bytes(state, tmp_path))["model"].items()
        if not k.startswith("roi_heads.res5.")
    }
    save_detectron2_pkl(d2, tmp_path / "nores5.pkl")
    code = bissl_main(
        [
            "export",
            str(tmp_path / "nores5.pkl"),
            "--to",
            "torchvision",
            "--out",
            str(tmp_path / "y.pth"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing keys (50; layer4.* (50))" in err and "layer4.0.bn1.bias" in err


def _pkl_bytes(state: dict[str, torch.Tensor], tmp_path: Path) -> bytes:
    from bissl_dense.detection.correspondence import convert_state

    path = save_detectron2_pkl(convert_state(state, "detectron2"), tmp_path / "full.pkl")
    return path.read_bytes()


class _Exploit:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.path), "w"))


def test_crafted_pkl_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    payload = {"model": {"w": np.zeros(2)}, "__author__": _Exploit(marker)}
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(payload))
    with pytest.raises(WeightsError, match=r"open. is not allowed"):
        load_detectron2_pkl(tmp_path / "evil.pkl")
    assert not marker.exists()
    arrays = {"a": np.arange(3, dtype=np.float32), "b": np.ones((2, 2), dtype=np.int64)}
    save_detectron2_pkl(arrays, tmp_path / "ok.pkl")
    read = load_detectron2_pkl(tmp_path / "ok.pkl")
    assert set(read) == {"a", "b"} and all(np.array_equal(read[k], arrays[k]) for k in arrays)
    assert read["b"].dtype == np.int64

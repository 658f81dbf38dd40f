"""Published pretext file formats: names, export/load round trips, wrappers, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision import models

from bissl_dense.pretext import weights as weights_module
from bissl_dense.pretext.backbones import build_backbone
from bissl_dense.pretext.heads import PredictionHead, ProjectionHead
from bissl_dense.pretext.weights import (
    bissl_file_names,
    export_pretext,
    load_backbone_into,
    load_backbone_state,
    load_pretext_head,
    pretext_file_names,
    read_pretext_config,
    split_head_state,
)


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Give BatchNorm buffers non-default values so that a round trip really checks them."""
    for name, buffer in module.named_buffers():
        if name.endswith("running_mean"):
            buffer.uniform_(-1, 1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2)
        elif name.endswith("num_batches_tracked"):
            buffer.fill_(17)
    return module


def test_file_names_follow_the_published_pattern() -> None:
    names = pretext_file_names("simclr", "resnet50", "hb63rtyl")
    assert names == {
        "backbone": "Pretext_simclr_arch-resnet50_backbone_id-hb63rtyl.pth",
        "head": "Pretext_simclr_arch-resnet50_head_id-hb63rtyl.pth",
        "config": "Pretext_simclr_arch-resnet50_config_id-hb63rtyl.json",
    }
    assert bissl_file_names("byol", "classification", "cub200", "resnet50", "6lt5gn5i") == {
        "lower_backbone": "BiSSL_byol_classification_cub200_arch-resnet50_lower_backbone_id-"
        "6lt5gn5i.pth",
        "config": "BiSSL_byol_classification_cub200_arch-resnet50_config_id-6lt5gn5i.json",
    }
    with pytest.raises(ValueError, match="run_id"):
        pretext_file_names("simclr", "resnet50", "../x")


def test_export_then_load_round_trips_into_torchvision_resnet50(tmp_path: Path) -> None:
    backbone = _randomised(build_backbone("resnet50")[0])
    projector = _randomised(ProjectionHead(2048))
    predictor = PredictionHead()
    head_state = {f"projector.{k}": v for k, v in projector.state_dict().items()}
    head_state |= {f"predictor.{k}": v for k, v in predictor.state_dict().items()}
    config = {"pretext_task": "byol", "img_size": 96, "img_crop_min_ratio": 0.5, "lr": 4.8}

    paths = export_pretext(tmp_path, backbone, head_state, config, "byol", "resnet50", "abc123")
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in paths.values()}
    assert paths["backbone"].name == "Pretext_byol_arch-resnet50_backbone_id-abc123.pth"

    # Strict load into torchvision's ResNet-50 with its classifier ignored ...
    tv_model = models.resnet50(weights=None)
    fc_before = tv_model.fc.weight.clone()
    result = load_backbone_into(tv_model, paths["backbone"], strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    tv_state = {k: v for k, v in tv_model.state_dict().items() if not k.startswith("fc.")}
    _assert_same_state(tv_state, backbone.state_dict())
    assert torch.equal(tv_model.fc.weight, fc_before)
    # ... and into torchvision's ResNet-50 without its classifier.
    headless = models.resnet50(weights=None)
    headless.fc = torch.nn.Identity()
    load_backbone_into(headless, paths["backbone"])
    _assert_same_state(headless.state_dict(), backbone.state_dict())

    head = load_pretext_head(paths["head"])
    parts = split_head_state(head)
    assert set(parts) == {"projector", "predictor"}
    restored = ProjectionHead(2048)
    restored.load_state_dict(parts["projector"], strict=True)
    _assert_same_state(restored.state_dict(), projector.state_dict())
    assert read_pretext_config(paths["config"]) == config


def test_checkpoint_wrappers_and_prefixes_are_unwrapped(tmp_path: Path) -> None:
    backbone = _randomised(build_backbone("resnet18")[0])
    state = backbone.state_dict()
    fc = {"fc.weight": torch.randn(10, 512), "fc.bias": torch.randn(10)}
    variants = {
        "torchvision.pth": state | fc,
        "ddp.pth": {f"module.{k}": v for k, v in (state | fc).items()},
        "mmengine.pth": {
            "meta": {"epoch": 3, "seed": 0},
            "state_dict": {f"backbone.{k}": v for k, v in state.items()}
            | {"head.projector.0.weight": torch.randn(4, 512)},
        },
        "wrapped_model.pth": {"model": {f"module.backbone.{k}": v for k, v in state.items()}},
        "with_counter.pth": {"epoch": torch.tensor(3), "state_dict": state},
        # A BYOL-style model holds an online and a target ResNet: the online one is chosen.
        "byol_full.pth": {f"backbone.{k}": v for k, v in state.items()}
        | {f"backbone_target.{k}": torch.zeros_like(v) for k, v in state.items()},
    }
    for name, content in variants.items():
        torch.save(content, tmp_path / name)
        _assert_same_state(load_backbone_state(tmp_path / name), state)

    from safetensors.torch import save_file

    save_file(state | fc, str(tmp_path / "weights.safetensors"))
    _assert_same_state(load_backbone_state(tmp_path / "weights.safetensors"), state)

    ambiguous = {f"a.{k}": v for k, v in state.items()} | {f"b.{k}": v for k, v in state.items()}
    torch.save(ambiguous, tmp_path / "ambiguous.pth")
    with pytest.raises(ValueError, match="prefix"):
        load_backbone_state(tmp_path / "ambiguous.pth")
    _assert_same_state(load_backbone_state(tmp_path / "ambiguous.pth", prefix="b."), state)


def test_missing_num_batches_tracked_is_tolerated() -> None:
    backbone = build_backbone("resnet18")[0]
    state = {k: v for k, v in backbone.state_dict().items() if "num_batches_tracked" not in k}
    target = build_backbone("resnet18")[0]
    load_backbone_into(target, state)
    torch.testing.assert_close(target.conv1.weight, backbone.conv1.weight)


def test_mismatched_file_names_missing_unexpected_and_shape_keys(tmp_path: Path) -> None:
    state = build_backbone("resnet18")[0].state_dict()
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_backbone_into(build_backbone("resnet18")[0], path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys (1): [layer4.1.bn2.weight]" in message
    assert "unexpected keys (1): [extra.weight]" in message
    assert "strict=False" in message
    # Non-strict loading returns the differences instead.
    result = load_backbone_into(build_backbone("resnet18")[0], path, strict=False)
    assert result.missing_keys == ["layer4.1.bn2.weight"]
    assert result.unexpected_keys == ["extra.weight"]

    # A ResNet-18 file into a ResNet-50: shapes differ and blocks are missing.
    torch.save(build_backbone("resnet18")[0].state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError) as info:
        load_backbone_into(build_backbone("resnet50")[0], tmp_path / "r18.pth", strict=False)
    message = str(info.value)
    assert "shape mismatches" in message and "layer1.0.conv1.weight" in message
    assert "missing keys" in message and "layer1.0.conv3.weight" in message


_MARKER_FILE = "unpickled.txt"


def _leave_marker(path: str) -> str:
    Path(path).write_text("code ran")
    return path


class _Payload:
    """Unpickling this object would run `_leave_marker`: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_leave_marker, (self.marker,))


def test_pickled_python_objects_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / _MARKER_FILE
    state = build_backbone("resnet18")[0].state_dict()
    path = tmp_path / "malicious.pth"
    torch.save({"state_dict": state, "extra": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="Refused to load") as info:
        load_backbone_state(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="Refused to load"):
        load_pretext_head(path)
    assert not marker.exists()


def test_unreadable_and_non_state_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone_state(tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_backbone_state(tmp_path / "garbage.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pth")
    with pytest.raises(ValueError, match="no state dict found"):
        load_backbone_state(tmp_path / "no_tensors.pth")


def test_config_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"img_size": 96,\n "lr": }')
    with pytest.raises(ValueError, match=r"bad.json.*not valid JSON.*line 2"):
        read_pretext_config(bad)
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="JSON object"):
        read_pretext_config(listing)
    with pytest.raises(FileNotFoundError):
        read_pretext_config(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        export_pretext(tmp_path, {}, {}, {"path": tmp_path}, "simclr", "resnet18", "x")


def test_export_is_atomic_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = build_backbone("resnet18")[0]
    paths = export_pretext(tmp_path, backbone, {}, {"v": 1}, "simclr", "resnet18", "run")
    original = load_backbone_state(paths["backbone"])

    def failing_save(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(weights_module.torch, "save", failing_save)
    other = _randomised(build_backbone("resnet18")[0])
    with pytest.raises(OSError, match="disk full"):
        export_pretext(tmp_path, other, {}, {"v": 2}, "simclr", "resnet18", "run")
    monkeypatch.undo()
    # The previous files are intact and no temporary file is left behind.
    _assert_same_state(load_backbone_state(paths["backbone"]), original)
    assert read_pretext_config(paths["config"]) == {"v": 1}
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in paths.values()}

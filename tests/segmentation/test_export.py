"""``bissl export --to mmseg``: the file loads through mmseg's ``init_cfg`` with every key
matched."""

from __future__ import annotations

from pathlib import Path

import torch

from bissl_dense.cli import main
from bissl_dense.pretext.backbones import build_backbone
from bissl_dense.segmentation.model import build_segmentor, fcn_d6_r50_d16


def test_export_to_mmseg_loads_every_tensor(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet50")
    with torch.no_grad():
        for buffer in backbone.buffers():
            if buffer.dtype.is_floating_point:
                buffer.uniform_(0.5, 1.5)
    source = tmp_path / "lower_backbone.pth"
    torch.save(backbone.state_dict(), source)
    out = tmp_path / "mmseg_init.pth"
    assert main(["export", str(source), "--to", "mmseg", "--out", str(out)]) == 0

    saved = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    cfg = fcn_d6_r50_d16(21)
    cfg["backbone"]["init_cfg"] = dict(type="Pretrained", checkpoint=str(out), prefix="backbone.")
    segmentor = build_segmentor(cfg)
    own = segmentor.backbone.state_dict()
    assert {k.removeprefix("backbone.") for k in saved} == set(own)  # every key matched
    segmentor.init_weights()
    for name, value in backbone.state_dict().items():
        assert torch.equal(segmentor.backbone.state_dict()[name], value), name

    # a file of another architecture fails, naming the keys
    small, _ = build_backbone("resnet18")
    torch.save(small.state_dict(), tmp_path / "r18.pth")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "r18.pth"), "--to", "mmseg", "--out", str(out)]) == 2
    assert "layer1.0.conv3.weight" in capsys.readouterr().err

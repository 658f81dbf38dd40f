"""``bissl analyze`` through the command line on generated data (issue 9, SPEC §7).

The backbones are a random ResNet-18 ("pretext"), a perturbed copy ("BiSSL") and fine-tuned
versions of each written as fine-tuning runs write them (``<work_dir>/best.pth`` holding the
classifier's ``state_dict`` with ``backbone.``/``head.`` keys). The parameter cosine
similarities in the table are checked against a hand computation over the flattened
parameters; the feature similarities must lie in [-1, 1] and be 1 for an identical copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bissl_dense.cli import main
from bissl_dense.datasets.synthetic import write_imagefolder
from bissl_dense.pretext.backbones import build_backbone
from bissl_dense.reports.markdown import is_png

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "classification" / "finetune_resnet18_synthetic.py"


def _perturbed(state: dict[str, torch.Tensor], scale: float, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in state.items()
    }


def _write_finetuned(work_dir: Path, state: dict[str, torch.Tensor]) -> Path:
    work_dir.mkdir(parents=True)
    full = {f"backbone.{k}": v for k, v in state.items()}
    full |= {"head.weight": torch.zeros(5, 512), "head.bias": torch.zeros(5)}
    torch.save({"state_dict": full}, work_dir / "best.pth")
    return work_dir


def _parameter_cs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str]):
    x = np.concatenate([a[n].double().numpy().ravel() for n in names])
    y = np.concatenate([b[n].double().numpy().ravel() for n in names])
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_analyze_writes_table_and_tsne(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_imagefolder(data, 40, num_classes=5, size=32, seed=0)
    torch.manual_seed(0)
    backbone, _ = build_backbone(arch="resnet18")
    names = [name for name, _ in backbone.named_parameters()]
    pretext = {k: v.clone() for k, v in backbone.state_dict().items()}
    bissl = _perturbed(pretext, 0.01, seed=1)
    torch.save(pretext, tmp_path / "pretext.pth")
    torch.save(bissl, tmp_path / "bissl.pth")
    ft_pretext = [pretext, _perturbed(pretext, 0.05, seed=2)]  # the first is an identical copy
    ft_bissl = [_perturbed(bissl, 0.02, seed=3), _perturbed(bissl, 0.05, seed=4)]
    dirs_p = [_write_finetuned(tmp_path / f"ftp{i}", s) for i, s in enumerate(ft_pretext)]
    dirs_b = [_write_finetuned(tmp_path / f"ftb{i}", s) for i, s in enumerate(ft_bissl)]

    options = []
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        options += [
            f"{loader}.dataset.data_root={data}",
            f"{loader}.num_workers=0",
            f"{loader}.persistent_workers=False",
        ]
    options.append("train_dataloader.batch_size=8")  # 24 training images, drop_last
    out = tmp_path / "analysis"
    argv = ["analyze", "--pretext", str(tmp_path / "pretext.pth"), "--bissl"]
    argv += [str(tmp_path / "bissl.pth"), "--ft-pretext", *map(str, dirs_p), "--ft-bissl"]
    argv += [*map(str, dirs_b), "--config", str(CONFIG), "--out", str(out)]
    assert main([*argv, "--cfg-options", *options]) == 0

    rows = {r["backbone"]: r for r in json.loads((out / "alignment.json").read_text())["rows"]}
    assert set(rows) == {"pretext", "BiSSL"}
    for name, before, after in (("pretext", pretext, ft_pretext), ("BiSSL", bissl, ft_bissl)):
        expected = [_parameter_cs(before, ft, names) for ft in after]
        assert rows[name]["parameter_cs"] == pytest.approx(expected, rel=1e-9)
        assert all(-1 - 1e-9 <= v <= 1 + 1e-9 for v in rows[name]["feature_cs"])
    assert rows["pretext"]["parameter_cs"][0] == pytest.approx(1.0)
    # the pretext backbone's BN statistics were re-estimated, its fine-tuned copy kept the old
    # ones: identical parameters, yet the features differ unless the statistics agree
    assert rows["pretext"]["feature_cs"][0] <= 1 + 1e-9
    assert "| pretext |" in (out / "alignment.md").read_text()
    assert (out / "alignment.csv").read_text().startswith("backbone,kind,seed_index")
    assert is_png(out / "tsne.png")
    printed = capsys.readouterr().out
    assert "parameter CS" in printed and str(out / "tsne.png") in printed


def test_analyze_missing_finetuned_run_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    backbone, _ = build_backbone(arch="resnet18")
    torch.save(backbone.state_dict(), tmp_path / "b.pth")
    missing = tmp_path / "no_run"
    argv = ["analyze", "--pretext", str(tmp_path / "b.pth"), "--bissl", str(tmp_path / "b.pth")]
    argv += ["--ft-pretext", str(missing), "--ft-bissl", str(missing), "--config", str(CONFIG)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bissl analyze: error:") and str(missing / "best.pth") in err

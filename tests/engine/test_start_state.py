"""Where BiSSL starts, measured inside the real command (SPEC §3; issue 21, item 2).

SPEC §3: θ_L = θ_U = the pretrained backbone, φ_P = the pretrained pretext head, φ_D = the
warmed-up head. ``tools/train.py CONFIG`` (the same ``main(["train", ...])``) runs in process
for classification, segmentation (VOC aug, Cityscapes) and mmdet's C4 detector, with SimCLR and
BYOL lower levels; the trainer's first step is replaced by a capture of both levels' weights, so
that everything the command does before BiSSL's first update (building the model, mmengine's
``Runner.train()`` with its ``init_weights()`` call, the loop's set-up, the hooks) has happened.

The files hold values that no initialisation produces (every tensor, BatchNorm statistics
included, is offset by noise), so a re-initialised tensor cannot pass by coincidence. Each
group must equal its file bit for bit: the lower backbone, the upper backbone (through the
correspondence, buffers included), the downstream head, the pretext head, and BYOL's target
network (= the online one). ``test_start_state`` prints the largest difference per group.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from mmengine.config import Config
from torch import Tensor, nn

from bissl_dense.cli import main
from bissl_dense.core.bilevel import BilevelTrainer
from bissl_dense.datasets.synthetic import (
    write_cityscapes,
    write_imagefolder,
    write_unlabeled,
    write_voc,
)
from bissl_dense.pretext.methods import BYOL, SimCLR
from bissl_dense.pretext.weights import export_pretext, load_backbone_state, load_pretext_head

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
R18_SEGMENTOR = [
    "model.pretext.backbone.arch=resnet18",
    "model.task.segmentor.backbone.depth=18",
    "model.task.segmentor.decode_head.in_channels=512",
]
R18_DETECTOR = [
    "model.pretext.backbone.arch=resnet18",
    "model.task.detector.backbone.depth=18",
    "model.task.detector.roi_head.shared_head.depth=18",
    "model.task.detector.rpn_head.in_channels=256",
    "model.task.detector.rpn_head.feat_channels=256",
    "model.task.detector.roi_head.bbox_roi_extractor.out_channels=256",
    "model.task.detector.roi_head.bbox_head.in_channels=512",
]


def build_classifier(task: Mapping[str, Any]) -> nn.Module:
    from classification.models import ImageClassifier

    return ImageClassifier(
        **{k: v for k, v in task.items() if k not in ("type", "head_checkpoint")}
    )


def build_segmentor(task: Mapping[str, Any]) -> nn.Module:
    from bissl_dense.segmentation.model import build_segmentor

    return build_segmentor(task["segmentor"])


def build_detector(task: Mapping[str, Any]) -> nn.Module:
    from bissl_dense.mmdet_task.task import build_detector

    return build_detector(task["detector"])


@dataclass(frozen=True)
class Case:
    config: str  # relative to configs/
    data: str  # key of the ``data`` fixture the downstream data_root entries point at
    prefixes: Mapping[str, str]  # lower backbone name prefix -> upper name prefix
    head: tuple[str, ...]  # the downstream head's entries in the upper model
    build_upper: Callable[[Mapping[str, Any]], nn.Module]  # from model.task (head file's keys)
    options: tuple[str, ...] = ()
    byol: bool = False  # a BYOL lower level: the config's own, or the shipped one put in its place


BACKBONE = {"": "backbone."}
CASES = {
    # classification with SimCLR is the same path as with BYOL, whose target network adds a group
    "classification-byol": Case(
        "classification/bissl_byol_resnet18_synthetic.py",
        "labelled",
        BACKBONE,
        ("head.",),
        build_classifier,
        byol=True,
    ),
    "voc_aug-simclr": Case(
        "segmentation/bissl_simclr_fcn_r50_voc_aug_synthetic.py",
        "voc2012",
        BACKBONE,
        ("decode_head.", "auxiliary_head."),
        build_segmentor,
        tuple(R18_SEGMENTOR),
    ),
    "voc_aug-byol": Case(
        "segmentation/bissl_simclr_fcn_r50_voc_aug_synthetic.py",
        "voc2012",
        BACKBONE,
        ("decode_head.", "auxiliary_head."),
        build_segmentor,
        tuple(R18_SEGMENTOR),
        byol=True,
    ),
    "cityscapes-simclr": Case(
        "segmentation/bissl_simclr_fcn_r50_cityscapes_synthetic.py",
        "cityscapes",
        BACKBONE,
        ("decode_head.", "auxiliary_head."),
        build_segmentor,
        tuple(R18_SEGMENTOR),
    ),
    "mmdet_c4-simclr": Case(
        "mmdet/bissl_simclr_faster_rcnn_r50_c4_voc0712_synthetic.py",
        "vocdevkit",
        {"layer4.": "roi_head.shared_head.layer4.", "": "backbone."},
        ("rpn_head.", "roi_head.bbox_head."),
        build_detector,
        (*R18_DETECTOR, "model.task.detector.roi_head.bbox_head.num_classes=20"),
    ),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The smallest generated data sets the configs accept (nothing is trained on them)."""
    from bissl_dense.segmentation.data import write_cityscapes_split, write_voc_aug_split

    root = tmp_path_factory.mktemp("start_state_data")
    write_imagefolder(root / "labelled", 25, num_classes=5, size=32, seed=0)
    write_unlabeled(root / "unlabeled", 8, size=32, seed=0)
    write_voc(root / "voc", 8, seed=5, size=64, num_classes=4)
    voc2012 = root / "voc" / "VOCdevkit" / "VOC2012"
    write_voc_aug_split(voc2012, voc2012 / "splits", 0.25, seed=0)
    write_cityscapes(root / "cityscapes", 6, seed=3, size=(64, 32), n_val=2, num_cities=2)
    write_cityscapes_split(root / "cityscapes", root / "cityscapes" / "splits", 0.25, seed=0)
    return {
        "labelled": root / "labelled",
        "unlabeled": root / "unlabeled",
        "voc2012": voc2012,
        "vocdevkit": Path(f"{root / 'voc' / 'VOCdevkit'}/"),
        "cityscapes": root / "cityscapes",
    }


@torch.no_grad()
def offset_by_noise(state: Mapping[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """``state`` with every floating-point tensor moved by N(0, 0.1²) noise and every counter set
    to 7: BatchNorm weights no longer 1, biases and running means no longer 0, convolutions no
    longer a fresh draw, so no initialisation reproduces any of them."""
    out = {}
    for name, value in state.items():
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
            if name.endswith("running_var"):  # stays positive
                out[name] = value * (1.0 + 0.1 * noise.abs())
            else:
                out[name] = value + 0.1 * noise
        else:
            out[name] = torch.full_like(value, 7)
    return out


@pytest.fixture(scope="module")
def pretext_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Pretext backbone and head files (published layout) whose values no init produces."""
    out = tmp_path_factory.mktemp("pretext")
    files = {}
    for method, cls in (("simclr", SimCLR), ("byol", BYOL)):
        torch.manual_seed(0)
        model = cls(backbone=dict(arch="resnet18"))
        generator = torch.Generator().manual_seed(1)
        backbone = offset_by_noise(model.backbone.state_dict(), generator)
        head = offset_by_noise(model.head_state_dict(), generator)
        files[method] = export_pretext(out, backbone, head, {}, method, "resnet18", "start")
    return files


def write_byol_config(out: Path, base: Path) -> Path:
    """``base`` with the lower level replaced by the shipped BYOL one (ResNet-18 via options)."""
    pretext = Config.fromfile(
        str(CONFIGS / "segmentation/_base_/models/bissl_byol_fcn.py")
    ).model.pretext.to_dict()
    path = out / f"{base.stem}_byol.py"
    path.write_text(
        f"_base_ = [{str(base)!r}]\nmodel = dict(pretext=dict(_delete_=True, **{pretext!r}))\n"
    )
    return path


def dataloader_options(config: Path, data: dict[str, Path], downstream: str) -> list[str]:
    """``--cfg-options`` pointing every data_root of the downstream loaders at the generated data
    (whatever the loaders' nesting) and the pretext loader at the unlabeled images; no workers."""
    cfg = Config.fromfile(str(config)).to_dict()
    options: list[str] = []

    def walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, Mapping):
            for key, value in node.items():
                yield f"{path}.{key}", value
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, f"{path}.{index}")

    for loader in ("train_dataloader", "val_dataloader", "test_dataloader", "pretext_dataloader"):
        if cfg.get(loader) is None:
            continue
        root = data["unlabeled"] if loader == "pretext_dataloader" else data[downstream]
        for key, _ in walk(cfg[loader], loader):
            if key.endswith(".data_root"):
                options.append(f"{key}={root}")
        if "num_workers" in cfg[loader]:
            options.append(f"{loader}.num_workers=0")
        if "persistent_workers" in cfg[loader]:
            options.append(f"{loader}.persistent_workers=False")
    return options


def parse_options(options: list[str]) -> dict[str, Any]:
    """``--cfg-options`` as the command parses them (mmengine's DictAction)."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    return parser.parse_args(["--cfg-options", *options]).cfg_options


def write_head_file(config: Path, options: list[str], case: Case, out: Path) -> Path:
    """A "warmed-up head" checkpoint for ``case``: the entries of the config's downstream head
    (names and shapes of the model the run builds) with values no initialisation produces, as
    ``{"state_dict": ...}``, the form of a warm-up run's checkpoint that every task's
    ``head_checkpoint`` accepts."""
    from bissl_dense.engine.runner import load_config

    cfg = load_config(config, parse_options(options))
    upper = case.build_upper(cfg.model.task.to_dict()).state_dict()
    head = {k: v for k, v in upper.items() if k.startswith(case.head)}
    assert head, f"no {case.head} entries in the upper model"
    path = out / "warmed_up_head.pth"
    torch.save({"state_dict": offset_by_noise(head, torch.Generator().manual_seed(2))}, path)
    return path


class Captured(Exception):
    """Raised by the patched first step once the weights are copied."""


def capture_first_step(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Patch the trainer so that its first step records both levels and stops the run."""
    seen: dict[str, Any] = {}

    def train_step(self: BilevelTrainer) -> Any:
        assert self.global_step == 0, "the capture must happen at BiSSL's first step"
        step = self.step_fn
        seen["lower"] = {k: v.detach().clone() for k, v in step.lower_model.state_dict().items()}
        seen["upper"] = {k: v.detach().clone() for k, v in step.upper_model.state_dict().items()}
        seen["pretext_head"] = {
            k: v.detach().clone() for k, v in step.lower_model.head_state_dict().items()
        }
        raise Captured

    monkeypatch.setattr(BilevelTrainer, "train_step", train_step)
    return seen


def upper_name(name: str, prefixes: Mapping[str, str]) -> str:
    """The upper model's name of a lower backbone entry (the first matching prefix wins)."""
    for lower, upper in prefixes.items():
        if name.startswith(lower):
            return upper + name[len(lower) :]
    raise KeyError(name)


@dataclass
class Difference:
    """Largest |file − captured| over a group's entries, and how many entries differ at all."""

    max_abs: float
    differing: int
    entries: int

    def __str__(self) -> str:
        return f"{self.max_abs:.3g} ({self.differing} of {self.entries} tensors differ)"


def difference(expected: Mapping[str, Tensor], actual: Mapping[str, Tensor]) -> Difference:
    """The :class:`Difference` of two state dicts; a key or shape mismatch counts as inf."""
    if set(expected) != set(actual):
        return Difference(float("inf"), len(set(expected) ^ set(actual)), len(expected))
    worst, differing = 0.0, 0
    for name, value in expected.items():
        other = actual[name]
        if other.shape != value.shape:
            return Difference(float("inf"), -1, len(expected))
        if not torch.equal(value, other):
            differing += 1
            worst = max(worst, float((value.double() - other.double()).abs().max()))
    return Difference(worst, differing, len(expected))


def under(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def start_state_differences(
    seen: Mapping[str, Any], files: Mapping[str, Path], head_file: Path, case: Case
) -> dict[str, Difference]:
    """Largest difference per group between the captured weights and their files."""
    backbone = load_backbone_state(files["backbone"])
    pretext_head = load_pretext_head(files["head"])
    warmed_up = torch.load(head_file, map_location="cpu", weights_only=True)["state_dict"]
    lower, upper = seen["lower"], seen["upper"]
    mapped = {upper_name(k, case.prefixes): k for k in backbone}
    differences = {
        "lower backbone (θ_L)": difference(backbone, under("backbone.", lower)),
        "upper backbone (θ_U)": difference(
            backbone, {mapped[k]: v for k, v in upper.items() if k in mapped}
        ),
        "downstream head (φ_D)": difference(
            warmed_up, {k: v for k, v in upper.items() if k.startswith(case.head)}
        ),
        "pretext head (φ_P)": difference(pretext_head, seen["pretext_head"]),
    }
    if case.byol:  # the target network starts as the online one (SPEC §4)
        differences["BYOL target backbone"] = difference(backbone, under("target_backbone.", lower))
        differences["BYOL target projector"] = difference(
            under("projector.", pretext_head), under("target_projector.", lower)
        )
    # every upper entry is either a backbone entry or a head entry: nothing went unchecked
    unchecked = [k for k in upper if k not in mapped and not k.startswith(case.head)]
    assert not unchecked, f"upper entries neither backbone nor head: {unchecked[:5]}"
    return differences


def run_until_first_step(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    data: dict[str, Path],
    files: dict[str, Path],
    case: Case,
) -> tuple[dict[str, Any], Path]:
    config = CONFIGS / case.config
    if case.byol and "byol" not in config.stem:
        config = write_byol_config(tmp_path, config)
    options = [
        *dataloader_options(config, data, case.data),
        f"model.pretext.backbone_checkpoint={files['backbone']}",
        f"model.pretext.head_checkpoint={files['head']}",
        *case.options,
    ]
    head_file = write_head_file(config, options, case, tmp_path)
    seen = capture_first_step(monkeypatch)
    # The config's pretty-printing for the log and the work dir (yapf: ~2 s a call for the mmdet
    # config, four calls per run) has no effect on any weight; plain text keeps the test fast.
    monkeypatch.setattr(Config, "pretty_text", property(lambda cfg: cfg.text))
    with pytest.raises(Captured):
        main(["train", str(config), "--work-dir", str(tmp_path / "run"), "--cfg-options",
              *options, f"model.task.head_checkpoint={head_file}"])  # fmt: skip
    return seen, head_file


@pytest.mark.parametrize("name", list(CASES))
def test_start_state(
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    data: dict[str, Path],
    pretext_files: dict[str, dict[str, Path]],
) -> None:
    case = CASES[name]
    files = pretext_files["byol" if case.byol else "simclr"]
    seen, head_file = run_until_first_step(monkeypatch, tmp_path, data, files, case)
    differences = start_state_differences(seen, files, head_file, case)
    print(f"{name}: " + "; ".join(f"{group} {value}" for group, value in differences.items()))
    assert all(value.differing == 0 for value in differences.values()), differences


def test_the_model_is_final_at_construction() -> None:
    """``init_weights()`` (what mmengine's runner calls) changes nothing, and an ``init_cfg``,
    which would be applied over the files, is refused."""
    from bissl_dense.engine.bissl_loop import BiSSLModel
    from bissl_dense.errors import ConfigError

    pretext = dict(type="SimCLR", backbone=dict(arch="resnet18"))
    task = dict(type="ImageClassificationTask", num_classes=3, backbone=dict(arch="resnet18"))
    model = BiSSLModel(pretext=pretext, task=task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="init_cfg"):
        BiSSLModel(pretext=pretext, task=task, init_cfg=dict(type="Pretrained", checkpoint="x"))

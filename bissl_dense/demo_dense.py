"""``make demo-dense``: detection and segmentation through BiSSL on generated data, in a report.

The dense half of the demo (issue 12): with a ResNet-50 (the dense tasks' backbone, SPEC §5) on
generated data in the real layouts, it runs the commands a user runs, each printed first:

1. data: VOC07+12 (``VOCdevkit/VOC20xx``), Cityscapes (``leftImg8bit``/``gtFine`` and the
   per-city split lists) and a folder of unlabeled pretext images, all small;
2. ``bissl pretrain``: a short SimCLR pretraining of the ResNet-50 (the pretext backbone and head);
3. detection, Faster R-CNN R50-C4 on detectron2 (``tools/train_net.py`` on
   ``configs/detection/tiny_cpu.yaml``: 64 px images, few proposals): ``bissl export --to
   detectron2``, head warm-up, a few BiSSL alternations, then a short fine-tuning from the
   pretext backbone (FT) and from the BiSSL backbone (BiSSL + FT), AP50 on VOC07 test;
4. segmentation, FCN-16 on mmseg (``tools/train.py``, the ``*_cityscapes_synthetic.py``
   configs): head warm-up on the frozen backbone, a few BiSSL alternations, fine-tuning from
   both backbones, mIoU on the Cityscapes validation images (the test split, SPEC §5);
5. ``<work_dir>/report.md``: AP50 and mIoU of FT and BiSSL + FT (one seed each: a demonstration
   of the commands, not a measurement), the loss curves of both BiSSL levels of each task, and
   the commands.

A stage whose output exists is skipped on a rerun; an interrupted training run resumes from its
last checkpoint (``--resume``), so the same command continues after an interruption. detectron2
must be installed (``make install`` builds it); without it the detection part is refused with
the reason.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bissl_dense.errors import ConfigError, UserError
from bissl_dense.experiments.progress import format_duration, print_line

__all__ = ["DENSE_PRESETS", "DenseBudget", "main", "run_dense_demo"]

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@dataclass(frozen=True)
class DenseBudget:
    """How much each stage of the dense demo trains."""

    voc_images: int  # per VOC year
    cityscapes_images: int
    unlabeled_images: int
    pretext_epochs: int
    warmup_iters: int  # detection; segmentation warms up for one epoch
    alternations: int  # T
    lower_steps: int  # N_L
    upper_steps: int  # N_U
    cg_iters: int  # K
    finetune_iters: int  # detection
    finetune_epochs: int  # segmentation


DENSE_PRESETS = {
    "full": DenseBudget(
        voc_images=48,
        cityscapes_images=16,
        unlabeled_images=64,
        pretext_epochs=2,
        warmup_iters=20,
        alternations=3,
        lower_steps=2,
        upper_steps=2,
        cg_iters=5,
        finetune_iters=40,
        finetune_epochs=4,
    ),
    "quick": DenseBudget(
        voc_images=16,
        cityscapes_images=8,
        unlabeled_images=32,
        pretext_epochs=1,
        warmup_iters=1,
        alternations=1,
        lower_steps=1,
        upper_steps=1,
        cg_iters=1,
        finetune_iters=2,
        finetune_epochs=1,
    ),
}


class _Runner:
    """Runs the demo's commands in this process and records them as shell lines."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.commands = log, []

    def _announce(self, program: str, argv: Sequence[str]) -> None:
        line = f"$ {program} " + " ".join(shlex.quote(str(a)) for a in argv)
        self.commands.append(line)
        self.log(line)

    def bissl(self, argv: list[str]) -> None:
        from bissl_dense.cli import main

        self._announce("bissl", argv)
        if main(argv) != 0:
            raise UserError(f"the step `bissl {argv[0]}` failed (its error is above)")

    def mmengine(self, argv: list[str]) -> None:
        """``python tools/train.py CONFIG ...`` (the same entry point as ``bissl train``)."""
        from bissl_dense.cli import main

        self._announce("python tools/train.py", argv)
        if main(["train", *argv]) != 0:
            raise UserError(f"the step `tools/train.py {Path(argv[0]).name}` failed (see above)")

    def detectron2(self, argv: list[str]) -> None:
        """``python tools/train_net.py ...`` (detectron2's launcher, here one process)."""
        from bissl_dense.detection.train_net import main

        self._announce("python tools/train_net.py", argv)
        if main(argv) != 0:
            raise UserError("the step `tools/train_net.py` failed (its error is above)")


def _write_data(budget: DenseBudget, data: Path, log: Callable[[str], None]) -> None:
    if (data / "done.json").is_file():
        log(f"[demo-dense] data written before: {data}")
        return
    if data.exists():
        raise ConfigError(f"{data} exists but holds no done.json; remove it and rerun")
    from bissl_dense.datasets.synthetic import write_cityscapes, write_unlabeled, write_voc
    from bissl_dense.fileio import atomic_write_text, staged_directory
    from bissl_dense.segmentation.data import write_cityscapes_split

    with staged_directory(data) as staging:
        write_voc(staging / "voc", budget.voc_images, size=96)
        n_val = max(2, budget.cityscapes_images // 4)
        write_cityscapes(
            staging / "cityscapes", budget.cityscapes_images, size=(128, 64), n_val=n_val
        )
        write_cityscapes_split(
            staging / "cityscapes", staging / "cityscapes" / "splits", 0.25, seed=0
        )
        write_unlabeled(staging / "unlabeled", budget.unlabeled_images, size=48)
        atomic_write_text(staging / "done.json", json.dumps({"budget": budget.__dict__}))
    log(f"[demo-dense] data → {data} (VOC07+12, Cityscapes, unlabeled pretext images)")


def _newest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def _pretrain(budget: DenseBudget, work: Path, run: _Runner) -> tuple[Path, Path]:
    out = work / "pretext"
    backbone = _newest(out / "export", "Pretext_simclr_arch-resnet50_backbone_id-*.pth")
    head = _newest(out / "export", "Pretext_simclr_arch-resnet50_head_id-*.pth")
    if backbone is not None and head is not None:
        run.log(f"[demo-dense] pretext pretraining done before: {backbone}")
        return backbone, head
    argv = [
        "pretrain",
        str(CONFIGS / "pretext" / "simclr_resnet18_synthetic.py"),
        "--work-dir",
        str(out),
        "--cfg-options",
        "model.backbone.arch=resnet50",
        f"train_dataloader.dataset.data_root={work / 'data' / 'unlabeled'}",
        "train_dataloader.batch_size=32",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        f"train_cfg.max_epochs={budget.pretext_epochs}",
        "param_scheduler.0.end=1",
        "param_scheduler.1.begin=1",
        f"param_scheduler.1.end={max(2, budget.pretext_epochs)}",
    ]
    if (out / "last_checkpoint").is_file():
        argv.append("--resume")
    run.bissl(argv)
    backbone = _newest(out / "export", "Pretext_simclr_arch-resnet50_backbone_id-*.pth")
    head = _newest(out / "export", "Pretext_simclr_arch-resnet50_head_id-*.pth")
    if backbone is None or head is None:
        raise RuntimeError(f"pretext pretraining wrote no export under {out / 'export'}")
    return backbone, head


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _detection(
    budget: DenseBudget, work: Path, backbone: Path, head: Path, run: _Runner
) -> dict[str, float]:
    """Warm-up → BiSSL → fine-tuning (FT and BiSSL + FT) on detectron2; AP50 of each."""
    try:
        import detectron2  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"detection needs detectron2 ({error}); `make install` builds it (see README)"
        ) from None
    out, voc = work / "detection", work / "data" / "voc"
    tiny = str(CONFIGS / "detection" / "tiny_cpu.yaml")

    def train_net(output: Path, *opts: object) -> None:
        argv = ["--config-file", tiny]
        if (output / "last_checkpoint").is_file():
            argv.append("--resume")
        run.detectron2([*argv, "DATASETS.VOC_ROOT", str(voc), "OUTPUT_DIR", str(output),
                        *map(str, opts)])  # fmt: skip

    pretext_pkl = out / "pretext_backbone_detectron2.pkl"
    if not pretext_pkl.is_file():
        run.bissl(["export", str(backbone), "--to", "detectron2", "--out", str(pretext_pkl)])
    warmup = out / "warmup"
    if not (warmup / "model_final.pth").is_file():
        train_net(warmup, "BISSL.STAGE", "warmup", "MODEL.WEIGHTS", pretext_pkl,
                  "SOLVER.MAX_ITER", budget.warmup_iters)  # fmt: skip
    bissl = out / "bissl"
    lower = _newest(bissl / "export", "BiSSL_*_lower_backbone_id-*_detectron2.pkl")
    if lower is None:
        train_net(
            bissl, "BISSL.STAGE", "bissl", "MODEL.WEIGHTS", warmup / "model_final.pth",
            "BISSL.PRETEXT.HEAD", head, "BISSL.ALTERNATIONS", budget.alternations,
            "BISSL.LOWER_STEPS", budget.lower_steps, "BISSL.UPPER_STEPS", budget.upper_steps,
            "BISSL.CG_ITERS", budget.cg_iters,
            "BISSL.PRETEXT.DATA_ROOT", work / "data" / "unlabeled",
        )  # fmt: skip
        lower = _newest(bissl / "export", "BiSSL_*_lower_backbone_id-*_detectron2.pkl")
        if lower is None:
            raise RuntimeError(f"the detection BiSSL run exported no backbone in {bissl}/export")
    ap50 = {}
    for arm, weights in (("FT", pretext_pkl), ("BiSSL + FT", lower)):
        finetune = out / ("finetune_bissl" if arm != "FT" else "finetune")
        if not (finetune / "results.json").is_file():
            train_net(finetune, "BISSL.STAGE", "finetune", "MODEL.WEIGHTS", weights,
                      "SOLVER.MAX_ITER", budget.finetune_iters)  # fmt: skip
        ap50[arm] = _ap50(_read_json(finetune / "results.json"), finetune / "results.json")
    return ap50


def _ap50(results: dict, path: Path) -> float:
    """AP50 of the VOC07 test set from a detection ``results.json`` (any nesting level)."""
    stack = [results]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "AP50" in node and isinstance(node["AP50"], int | float):
                return float(node["AP50"])
            stack.extend(node.values())
    raise KeyError(f"{path} holds no AP50")


def _segmentation(
    budget: DenseBudget, work: Path, backbone: Path, head: Path, run: _Runner
) -> dict[str, float]:
    """Warm-up → BiSSL → fine-tuning (FT and BiSSL + FT) on mmseg, Cityscapes; mIoU of each."""
    out, city = work / "segmentation", work / "data" / "cityscapes"
    seg = CONFIGS / "segmentation"
    data = [
        f"train_dataloader.dataset.dataset.data_root={city}",
        f"val_dataloader.dataset.data_root={city}",
    ]
    finetune_config = str(seg / "finetune_fcn_r50_cityscapes_synthetic.py")

    def train(config: str, work_dir: Path, *options: str) -> None:
        argv = [config, "--work-dir", str(work_dir), "--cfg-options", *data, *options]
        if (work_dir / "last_checkpoint").is_file():
            argv.append("--resume")
        run.mmengine(argv)

    warmup = out / "warmup"
    if not (warmup / "results.json").is_file():
        # the head warm-up: fine-tuning's config with the backbone frozen (its header comment)
        train(finetune_config, warmup, f"model.backbone.init_cfg.checkpoint={backbone}",
              "model.backbone.frozen_stages=4", "model.backbone.norm_eval=True",
              "train_cfg.max_epochs=1", f"test_dataloader.dataset.data_root={city}")  # fmt: skip
    warmed = Path((warmup / "last_checkpoint").read_text().strip())
    bissl = out / "bissl"
    lower = _newest(bissl / "export", "BiSSL_*_lower_backbone_id-*.pth")
    if lower is None:
        train(
            str(seg / "bissl_simclr_fcn_r50_cityscapes_synthetic.py"), bissl,
            f"pretext_dataloader.dataset.data_root={work / 'data' / 'unlabeled'}",
            f"model.pretext.backbone_checkpoint={backbone}",
            f"model.pretext.head_checkpoint={head}", f"model.task.head_checkpoint={warmed}",
            f"train_cfg.bissl.alternations={budget.alternations}",
            f"train_cfg.bissl.lower_steps={budget.lower_steps}",
            f"train_cfg.bissl.upper_steps={budget.upper_steps}",
            f"train_cfg.bissl.cg_iters={budget.cg_iters}",
            f"train_cfg.val_interval={budget.alternations}",
        )  # fmt: skip
        lower = _newest(bissl / "export", "BiSSL_*_lower_backbone_id-*.pth")
        if lower is None:
            raise RuntimeError(f"the segmentation BiSSL run exported no backbone in {bissl}")
    miou = {}
    for arm, weights in (("FT", backbone), ("BiSSL + FT", lower)):
        finetune = out / ("finetune_bissl" if arm != "FT" else "finetune")
        if not (finetune / "results.json").is_file():
            train(finetune_config, finetune, f"model.backbone.init_cfg.checkpoint={weights}",
                  f"train_cfg.max_epochs={budget.finetune_epochs}",
                  f"param_scheduler.0.end={budget.finetune_epochs}",
                  f"test_dataloader.dataset.data_root={city}")  # fmt: skip
        results = _read_json(finetune / "results.json")
        miou[arm] = float(results["test"]["mIoU"])
    return miou


def write_dense_report(
    work: Path,
    scores: dict[str, dict[str, float]],
    commands: Sequence[str],
    elapsed: dict[str, float],
) -> Path:
    """``<work>/report.md``: the scores table, both tasks' BiSSL loss curves, the commands."""
    from bissl_dense.reports.markdown import MarkdownReport
    from bissl_dense.reports.plots import plot_bissl_loss_curves

    report = MarkdownReport(work / "report.md", "bissl demo-dense: detection and segmentation")
    report.paragraph(
        "ResNet-50, SimCLR pretext task, generated data in the real layouts. One seed per arm "
        "and a few steps per stage: this shows the commands end to end, it measures nothing."
    )
    lines = ["| task | metric | FT | BiSSL + FT |", "|---|---|---:|---:|"]
    names = {"detection": ("Faster R-CNN C4, VOC07 test", "AP50"),
             "segmentation": ("FCN-16, Cityscapes val", "mIoU")}  # fmt: skip
    for task, values in scores.items():
        label, metric = names[task]
        lines.append(f"| {label} | {metric} | {values['FT']:.2f} | {values['BiSSL + FT']:.2f} |")
    report.section("Results").table("\n".join(lines))
    report.section("BiSSL training")
    for task in scores:
        curves = plot_bissl_loss_curves(work / task / "bissl", work / "figures" / f"{task}.png")
        report.image(curves, f"{task}: losses of the lower (SimCLR) and upper level")
    report.section("Times").key_values({k: format_duration(v) for k, v in elapsed.items()})
    report.section("Commands").paragraph("```\n" + "\n".join(commands) + "\n```")
    return report.write()


def run_dense_demo(
    work_dir: str | Path = "work_dirs/demo-dense",
    preset: str = "full",
    log: Callable[[str], None] = print_line,
) -> Path:
    """Run the dense demo (module docstring) into ``work_dir``; return the report's path."""
    if preset not in DENSE_PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(DENSE_PRESETS)}, got {preset!r}")
    budget, work = DENSE_PRESETS[preset], Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run, elapsed, start = _Runner(log), {}, time.perf_counter()

    def step(index: int, name: str) -> float:
        so_far = format_duration(time.perf_counter() - start)
        log(f"[demo-dense] step {index}/5: {name} ({so_far} so far)")
        return time.perf_counter()

    t = step(1, "data")
    _write_data(budget, work / "data", log)
    t = step(2, "pretext pretraining (SimCLR, ResNet-50)")
    backbone, head = _pretrain(budget, work, run)
    elapsed["pretext pretraining"] = time.perf_counter() - t
    t = step(3, "detection: warm-up → BiSSL → fine-tuning (detectron2)")
    scores = {"detection": _detection(budget, work, backbone, head, run)}
    elapsed["detection"] = time.perf_counter() - t
    t = step(4, "segmentation: warm-up → BiSSL → fine-tuning (mmseg)")
    scores["segmentation"] = _segmentation(budget, work, backbone, head, run)
    elapsed["segmentation"] = time.perf_counter() - t
    elapsed["total (this run)"] = time.perf_counter() - start
    step(5, "report")
    report = write_dense_report(work, scores, run.commands, elapsed)
    for task, values in scores.items():
        log(f"[demo-dense] {task}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    log(f"[demo-dense] done in {format_duration(time.perf_counter() - start)}; report: {report}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bissl_dense.demo_dense", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--work-dir", default="work_dirs/demo-dense")
    parser.add_argument("--preset", choices=sorted(DENSE_PRESETS), default="full")
    args = parser.parse_args(argv)
    try:
        run_dense_demo(args.work_dir, args.preset)
    except UserError as error:
        print(f"demo-dense: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

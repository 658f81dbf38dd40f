"""``bissl demo`` (issue 12): the shortened demo end to end, its resume, and its report.

One module-scoped run of the ``quick`` preset on the generated data (every stage with a
handful of steps, 2 configurations and 2 seeds per arm) through ``bissl_dense.cli.main``; the
tests read what it wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bissl_dense.cli import build_parser, main
from bissl_dense.demo import DEMO_PRESETS, DemoPaths, write_demo_report
from bissl_dense.reports.markdown import is_png, referenced_images
from bissl_dense.reports.tables import ComparisonTable

pytestmark = pytest.mark.slow

FIGURES = {"seeds.png", "losses_bissl.png", "tsne.png", "search_ft.png", "search_bissl.png"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoPaths:
    work = tmp_path_factory.mktemp("demo") / "work"
    assert main(["demo", "--preset", "quick", "--work-dir", str(work), "--num-cpus", "2"]) == 0
    return DemoPaths(work)


def test_quick_demo_writes_the_report_with_every_figure_and_the_table(demo: DemoPaths) -> None:
    text = demo.report.read_text()
    images = referenced_images(text)
    assert {Path(p).name for p in images} == FIGURES
    for image in images:
        assert is_png(demo.report.parent / image), image
    # the table is compare's, with both arms and their seeds
    table = ComparisonTable.from_json((demo.compare / "report" / "comparison.json").read_text())
    rows = {row.arm: row for row in table.rows}
    assert set(rows) == {"ft", "bissl"}
    assert all(row.n == DEMO_PRESETS["quick"].seeds for row in rows.values())
    assert table.to_markdown().splitlines()[0] in text
    # the alignment table, and the commands a user would run
    assert "parameter CS" in text and "| pretext |" in text and "| BiSSL |" in text
    for command in ("$ bissl pretrain", "$ bissl compare", "$ bissl analyze"):
        assert command in text
    alignment = json.loads((demo.analysis / "alignment.json").read_text())
    assert {row["backbone"] for row in alignment["rows"]} == {"pretext", "BiSSL"}


def test_rerun_continues_without_redoing(demo: DemoPaths, capsys: pytest.CaptureFixture) -> None:
    finished = [
        *demo.work_dir.glob("compare/arms/*/*/*/results.json"),
        *demo.work_dir.glob("pretext/export/*"),
        *demo.work_dir.glob("compare/prepare/**/export/*"),
        demo.analysis / "alignment.json",
    ]
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    capsys.readouterr()
    assert main(["demo", "--preset", "quick", "--work-dir", str(demo.work_dir)]) == 0
    out = capsys.readouterr().out
    for line in ("data written before", "pretext pretraining done before", "0 to run"):
        assert line in out
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps
    assert "report: " + str(demo.report) in out


def test_report_refuses_a_missing_figure(demo: DemoPaths, tmp_path: Path) -> None:
    copy = DemoPaths(tmp_path / "copy")
    shutil.copytree(demo.work_dir, copy.work_dir, ignore=shutil.ignore_patterns("*.pth"))
    kwargs = dict(
        data_description="d", budget=DEMO_PRESETS["quick"], commands=["$ bissl x"], elapsed={}
    )
    assert write_demo_report(copy, **kwargs).is_file()
    (copy.analysis / "tsne.png").unlink()
    copy.report.unlink()
    with pytest.raises(FileNotFoundError, match="tsne.png does not exist"):
        write_demo_report(copy, **kwargs)
    assert not copy.report.exists()  # nothing half-written


def test_bad_arguments_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--data", "mnist", "--work-dir", str(tmp_path)])
    assert "invalid choice: 'mnist'" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    assert main(["demo", "--work-dir", str(tmp_path), "--preset", "quick"]) == 2
    err = capsys.readouterr().err
    assert "holds no demo_data.json" in err and "Traceback" not in err


@pytest.mark.parametrize("data", ["synthetic", "digits"])
def test_every_stage_is_configured_for_the_classes_of_its_data(
    data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heads of warm-up, BiSSL, fine-tuning and the analysis have one output per class
    folder the demo wrote (digits: 10, while the generated-data configs default to 5)."""
    from bissl_dense import demo as demo_module
    from bissl_dense.engine.runner import load_config
    from bissl_dense.experiments.compare import arm_inputs

    paths = DemoPaths(tmp_path / "work")
    demo_module._write_data(data, DEMO_PRESETS["quick"], paths, log=lambda _: None)
    classes = len([p for p in (paths.labelled / "train").iterdir() if p.is_dir()])
    calls: list[list[str]] = []
    monkeypatch.setattr(demo_module, "_run_cli", lambda argv, log, commands: calls.append(argv))
    monkeypatch.setattr(demo_module, "_seed_dirs", lambda paths, arm: [tmp_path / arm])
    monkeypatch.setattr(demo_module, "_bissl_backbone", lambda paths: tmp_path / "bissl.pth")
    pretext = {"backbone": tmp_path / "backbone.pth", "head": tmp_path / "head.pth"}
    num_classes = demo_module.NUM_CLASSES[data]
    demo_module._compare(DEMO_PRESETS["quick"], paths, pretext, print, [], None, num_classes)
    demo_module._analyze(paths, pretext, print, [], num_classes)
    compare_argv, analyze_argv = calls

    inputs = arm_inputs(build_parser().parse_args(compare_argv))
    common = dict(inputs.common_options)
    stages = {
        "warm-up": (inputs.warmup_config, inputs.warmup_options, "model.num_classes"),
        "fine-tuning": (inputs.finetune_config, inputs.finetune_options, "model.num_classes"),
        "BiSSL": (inputs.bissl_config, inputs.bissl_options, "model.task.num_classes"),
    }
    analyze = build_parser().parse_args(analyze_argv)
    stages["analysis"] = (Path(analyze.config), {}, "model.num_classes")
    for stage, (config, options, key) in stages.items():
        options = {**common, **options} if stage != "analysis" else dict(analyze.cfg_options)
        cfg = load_config(config, options, tmp_path / "cfg", False)
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == classes, (stage, node, classes)

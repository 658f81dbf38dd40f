"""Scalar-log reading (on logs written by mmengine's own LocalVisBackend), plots and reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bissl_dense.experiments.ledger import TrialRecord
from bissl_dense.experiments.search import (
    DEFAULT_SPACE,
    SearchResult,
    sample_configurations,
    select_best,
)
from bissl_dense.experiments.seeds import ArmResult, SeedResults
from bissl_dense.reports.comparison import write_comparison_report
from bissl_dense.reports.markdown import MarkdownReport, is_png, referenced_images
from bissl_dense.reports.plots import (
    find_scalar_logs,
    load_scalar_series,
    plot_bissl_loss_curves,
    plot_search_scatter,
    plot_seed_results,
    plot_tsne,
    read_scalar_log,
)
from bissl_dense.reports.tables import ComparisonTable, compare_arms, write_comparison
from tests.experiments import _toy


def _log_run(work_dir: Path, timestamp: str, steps: range, offset: float) -> None:
    """Log like a BiSSL run through mmengine's LocalVisBackend (the real file format)."""
    from mmengine.visualization import LocalVisBackend

    backend = LocalVisBackend(save_dir=str(work_dir / timestamp / "vis_data"))
    for step in steps:
        backend.add_scalars(
            {
                "lower/pretext_loss": offset + 5.0 / step,
                "upper/loss": offset + 2.0 / step,
                "upper/ij_norm": 0.5,
                "lr": 0.1,
            },
            step=step,
        )
        if step % 10 == 0:  # a validation record in the same file, as LoggerHook writes it
            backend.add_scalars({"accuracy/top1": 50.0 + step}, step=step // 10)


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    """A fabricated BiSSL work dir: killed after step 27, resumed from step 21 to step 40."""
    work_dir = tmp_path / "bissl_run"
    _log_run(work_dir, "20261123_100000", range(1, 28), offset=100.0)
    _log_run(work_dir, "20261123_110000", range(21, 41), offset=0.0)
    return work_dir


def test_scalar_logs_merge_restarts(finished_run: Path) -> None:
    logs = find_scalar_logs(finished_run)
    assert [log.parent.parent.name for log in logs] == ["20261123_100000", "20261123_110000"]
    records = read_scalar_log(logs[0])
    assert records[0] == {
        "lower/pretext_loss": 105.0,
        "upper/loss": 102.0,
        "upper/ij_norm": 0.5,
        "lr": 0.1,
        "step": 1,
    }
    series = load_scalar_series(finished_run, prefix="lower/")
    assert list(series) == ["lower/pretext_loss"]
    steps, values = series["lower/pretext_loss"]
    np.testing.assert_array_equal(steps, np.arange(1, 41))
    # steps 1-20 from the first (killed) run, 21-40 from the resumed one, which replaced 21-27
    expected = np.array([(100.0 if s <= 20 else 0.0) + 5.0 / s for s in range(1, 41)])
    np.testing.assert_allclose(values, expected)
    val = load_scalar_series(finished_run, keys=["accuracy/top1"])["accuracy/top1"]
    # validations 1-2 come from the killed run (logged before step 21), 3-4 from the resumed one
    np.testing.assert_array_equal(val[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(val[1], [60.0, 70.0, 80.0, 90.0])
    with pytest.raises(KeyError, match="'nope'"):
        load_scalar_series(finished_run, keys=["nope"])


def test_truncated_last_line_is_skipped_and_bad_lines_named(tmp_path: Path) -> None:
    log = tmp_path / "run" / "20261123_100000" / "vis_data" / "scalars.json"
    log.parent.mkdir(parents=True)
    log.write_text('{"loss": 1.0, "step": 1}\n{"loss": 0.5, "st')
    assert read_scalar_log(log) == [{"loss": 1.0, "step": 1}]
    log.write_text('{"loss": 1.0, "step": 1}\nnot json\n{"loss": 0.5, "step": 2}\n')
    with pytest.raises(ValueError, match=r"scalars.json:2: not a JSON object"):
        read_scalar_log(log)
    with pytest.raises(FileNotFoundError, match="no scalar log under .*empty"):
        find_scalar_logs(tmp_path / "empty")


def test_detectron2_metrics_json_is_read_as_one_log(tmp_path: Path) -> None:
    """A detectron2 run's ``OUTPUT_DIR/metrics.json`` (written by its own ``JSONWriter``, keyed
    by ``iteration``, appended to across a resume) is the run's log when there is no mmengine
    one; the resumed points replace the earlier ones from the step it resumed at."""
    pytest.importorskip("detectron2")
    from detectron2.utils.events import EventStorage, JSONWriter

    def log(start: int, stop: int, offset: float) -> None:
        writer = JSONWriter(str(tmp_path / "metrics.json"))
        with EventStorage(start) as storage:
            for step in range(start, stop):
                storage.iter = step
                storage.put_scalar("lower/pretext_loss", offset + step, smoothing_hint=False)
                writer.write()
        writer.close()

    log(0, 4, 0.0)
    log(2, 5, 100.0)  # resumed at iteration 2: appends to the same file
    assert find_scalar_logs(tmp_path) == [tmp_path / "metrics.json"]
    steps, values = load_scalar_series(tmp_path, keys=["lower/pretext_loss"])["lower/pretext_loss"]
    assert steps.tolist() == [0, 1, 2, 3, 4]
    assert values.tolist() == [0.0, 1.0, 102.0, 103.0, 104.0]


def _assert_valid_png(path: Path, min_size: tuple[int, int] = (200, 200)) -> None:
    assert is_png(path)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 0  # something was drawn


def test_report_of_a_finished_run(tmp_path: Path, finished_run: Path) -> None:
    out = tmp_path / "report"
    rng = np.random.default_rng(0)
    results = {"ft": list(70 + rng.normal(0, 0.3, 4)), "bissl": list(71 + rng.normal(0, 0.3, 4))}
    table = compare_arms(results)
    write_comparison(table, out / "tables")
    trials = [
        {"lr": lr, "weight_decay": wd, "val_top1": 60 + 10 * np.exp(-(np.log10(lr / 0.03) ** 2))}
        for lr, wd in zip(10 ** rng.uniform(-4, 0, 12), 10 ** rng.uniform(-5, -2, 12))
    ]
    trials.append({"lr": 1.0, "weight_decay": 1e-3, "val_top1": float("nan")})  # diverged
    features = {
        name: (
            rng.normal(size=(60, 2)) + np.repeat(np.eye(3, 2) * 4, 20, axis=0),
            np.repeat(np.arange(3), 20),
        )
        for name in ("pretext", "BiSSL")
    }
    figures = {
        "seeds": plot_seed_results(results, out / "figures" / "seeds.png", metric="top-1 (%)"),
        "search": plot_search_scatter(trials, out / "figures" / "search_ft.png", "val_top1"),
        "losses": plot_bissl_loss_curves(finished_run, out / "figures" / "losses.png"),
        "tsne": plot_tsne(features, out / "figures" / "tsne.png", class_names=["a", "b", "c"]),
    }
    report = MarkdownReport(out / "report.md", "FT vs BiSSL+FT on generated data")
    report.section("Results").table(table).key_values({"seeds": 4, "best lr": 0.0316})
    report.section("Search").image(figures["search"], "search of the ft arm")
    report.section("Seeds").image(figures["seeds"], "per-seed test top-1")
    report.section("BiSSL").image(figures["losses"], "loss curves of both levels")
    report.image(figures["tsne"], "t-SNE of test features")
    path = report.write()

    text = path.read_text()
    assert text.startswith("# FT vs BiSSL+FT on generated data\n")
    assert table.to_markdown().strip() in text
    assert "| best lr | 0.0316 |" in text
    images = referenced_images(text)
    assert images == [
        "figures/search_ft.png",
        "figures/seeds.png",
        "figures/losses.png",
        "figures/tsne.png",
    ]
    for image in images:  # every referenced figure exists (relative to the report) and is a PNG
        _assert_valid_png(path.parent / image)
    assert not list(out.rglob(".*.tmp"))


def test_report_refuses_missing_or_non_png_figures(tmp_path: Path) -> None:
    report = MarkdownReport(tmp_path / "report.md", "r")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.image(tmp_path / "missing.png", "x")
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="is not a PNG"):
        report.image(tmp_path / "fake.png", "x")
    with pytest.raises(ValueError, match="level"):
        report.section("x", level=1)


def test_plots_reject_bad_input(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="trial 0 lacks 'lr'"):
        plot_search_scatter([{"wd": 1.0}], tmp_path / "s.png", "val")
    with pytest.raises(ValueError, match="panel 'a'"):
        plot_tsne({"a": (np.zeros((4, 3)), np.zeros(4, dtype=int))}, tmp_path / "t.png")


def _arm(name: str, epochs: int) -> ArmResult:
    """An arm computed without Ray: the toy trainable's search and seed runs, called directly."""
    configs = sample_configurations(DEFAULT_SPACE, 6, seed=1)
    trials = tuple(
        TrialRecord(
            f"{i:04d}", {**c, "epochs": epochs, "seed": 0}, _toy.train({**c, "epochs": epochs})
        )
        for i, c in enumerate(configs)
    )
    search = SearchResult(
        "val_top1", "max", trials, select_best(trials, "val_top1", "max"), ("lr", "weight_decay")
    )
    seed_runs = tuple(
        TrialRecord(
            str(s), {**search.best_config, "seed": s}, _toy.train({**search.best_config, "seed": s})
        )
        for s in range(4)
    )
    return ArmResult(name, search, SeedResults(search.best_config, seed_runs))


def test_comparison_report(tmp_path: Path, finished_run: Path) -> None:
    arms = {"ft": _arm("ft", epochs=1), "bissl": _arm("bissl", epochs=8)}
    path = write_comparison_report(
        tmp_path / "compare", arms, title="FT vs BiSSL+FT", bissl_runs={"bissl": finished_run}
    )
    text = path.read_text()
    images = referenced_images(text)
    assert images == [
        "figures/seeds.png",
        "figures/search_ft.png",
        "figures/search_bissl.png",
        "figures/losses_bissl.png",
    ]
    for image in images:
        _assert_valid_png(path.parent / image)
    table = ComparisonTable.from_json((path.parent / "comparison.json").read_text())
    assert table.row("bissl").values == tuple(arms["bissl"].seeds.values("test_top1"))
    assert table.to_markdown().strip() in text
    best = arms["ft"].search.best
    assert f"| best val_top1 | {best.metrics['val_top1']:.4g} |" in text
    assert (path.parent / "comparison.csv").exists() and (path.parent / "comparison.md").exists()

"""``bissl compare`` end to end on generated data with a ResNet-18 (issue 9).

One module-scoped comparison (arms ``ft,bissl``, 2 search configurations and 2 seeds each)
runs through ``bissl_dense.cli.main`` on a local Ray; the tests read what it wrote: the ledgers
agree with each trial's ``results.json``, the BiSSL arm fine-tunes the BiSSL backbone, the table,
plots and report exist, and running the same command again reruns nothing. The baseline arms
then run one configuration each in the same work directory (the BiSSL variants and the weighted
sum reuse its head warm-up): the new single-level arms through ``bissl compare`` (the weighted sum
from its shipped config, data_mix from the one derived from the BiSSL config), the others as
their preparation and one fine-tuning trial in this process. Images are read at 16 px and Ray
workers are reused across the trials of a search (``--reuse-actors``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bissl_dense.cli import build_parser, main
from bissl_dense.datasets.synthetic import write_imagefolder, write_unlabeled
from bissl_dense.engine.selection import read_results
from bissl_dense.errors import ConfigError
from bissl_dense.experiments.arms import parse_arms, prepare_arm
from bissl_dense.experiments.compare import arm_inputs
from bissl_dense.experiments.stages import finetune_trial, trial_metrics
from bissl_dense.pretext.methods import SimCLR
from bissl_dense.pretext.weights import export_pretext, load_backbone_state
from bissl_dense.reports.markdown import is_png, referenced_images
from bissl_dense.reports.tables import ComparisonTable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "classification"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        logging_level=logging.WARNING,
    )
    yield
    ray.shutdown()


#: Images are written at 32 px and read at 16 px (ResNet-18 still ends at a 1x1 map): a
#: quarter of the convolution work of 32 px in every fine-tuning trial and stage.
SIZE = 16


def _loader_options(prefix: str, root: Path) -> list[str]:
    return [
        f"{prefix}.dataset.data_root={root}",
        f"{prefix}.dataset.image_size={SIZE}",
        f"{prefix}.num_workers=0",
        f"{prefix}.persistent_workers=False",
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("compare")
    labelled, unlabeled = root / "labelled", root / "unlabeled"
    write_imagefolder(labelled, 40, num_classes=5, size=32, seed=0)
    write_unlabeled(unlabeled, 16, size=32, seed=0)
    torch.manual_seed(0)
    model = SimCLR(backbone=dict(arch="resnet18"))
    pretext = export_pretext(
        root / "pretext", model.backbone, model.head_state_dict(), {}, "simclr", "resnet18", "t0"
    )
    common = [
        *_loader_options("train_dataloader", labelled),
        *_loader_options("val_dataloader", labelled),
        "train_dataloader.batch_size=8",
    ]
    test_loader = _loader_options("test_dataloader", labelled)
    argv = [
        "compare",
        "--task-config",
        str(CONFIGS / "finetune_resnet18_synthetic.py"),
        "--warmup-config",
        str(CONFIGS / "warmup_resnet18_synthetic.py"),
        "--bissl-config",
        str(CONFIGS / "bissl_simclr_resnet18_synthetic.py"),
        "--weighted-sum-config",
        str(CONFIGS / "weighted_sum_simclr_resnet18_synthetic.py"),
        "--backbone",
        str(pretext["backbone"]),
        "--head",
        str(pretext["head"]),
        "--work-dir",
        str(root / "work"),
        "--reuse-actors",  # trials of seconds: one worker process runs many (no re-imports)
        "--cfg-options",
        *common,
        "--finetune-options",
        "train_cfg.max_epochs=1",
        *test_loader,
        "--warmup-options",
        "train_cfg.max_epochs=1",
        *test_loader,
        "--bissl-options",
        f"pretext_dataloader.dataset.data_root={unlabeled}",
        f"pretext_dataloader.dataset.augmentation.image_size={SIZE}",
        "pretext_dataloader.num_workers=0",
        "pretext_dataloader.batch_size=8",
        "train_cfg.val_interval=1",
        "train_cfg.bissl.alternations=1",
        "train_cfg.bissl.lower_steps=1",
        "train_cfg.bissl.upper_steps=2",
        "train_cfg.bissl.cg_iters=1",
        "train_cfg.bissl.residual_every=1",
    ]
    return {"root": root, "work": root / "work", "pretext": pretext, "argv": argv}


def _ledger(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text())["trials"]


@pytest.fixture(scope="module")
def compared(setup: dict, local_ray: None) -> dict:
    argv = [*setup["argv"], "--arms", "ft,bissl", "--num-samples", "2", "--seeds", "2"]
    assert main(argv) == 0
    return setup


def test_compare_ft_bissl_end_to_end(compared: dict, capsys: pytest.CaptureFixture[str]) -> None:
    work: Path = compared["work"]
    for arm in ("ft", "bissl"):
        search = _ledger(work / "arms" / arm / "search" / "search.json")
        seeds = _ledger(work / "arms" / arm / "seeds" / "seeds.json")
        assert len(search) == 2 and len(seeds) == 2
        for record in [*search.values(), *seeds.values()]:
            results = read_results(record["config"]["trial_dir"])
            assert record["metrics"] == pytest.approx(trial_metrics(results), nan_ok=True)
            assert results["selection_metric"] == "classification/top1"
            assert 0 <= record["metrics"]["test"] <= 100
        # the seeds ran at the configuration with the best validation score
        ordered = [search[key] for key in sorted(search)]  # ties: the first configuration
        best = max(ordered, key=lambda r: r["metrics"]["val"])
        for record in seeds.values():
            assert record["config"]["lr"] == best["config"]["lr"]
            assert record["config"]["weight_decay"] == best["config"]["weight_decay"]
    # the BiSSL arm fine-tunes the BiSSL lower backbone, which moved away from the pretext one
    bissl_record = next(iter(_ledger(work / "arms/bissl/seeds/seeds.json").values()))
    lower = Path(bissl_record["config"]["options"]["model.backbone_checkpoint"])
    assert lower.name.startswith("BiSSL_simclr") and lower.parent == work / "prepare/bissl/export"
    before = load_backbone_state(compared["pretext"]["backbone"])
    after = load_backbone_state(lower)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    report = work / "report" / "report.md"
    table = ComparisonTable.from_json((work / "report" / "comparison.json").read_text())
    rows = {row.arm: row for row in table.rows}
    assert set(rows) == {"ft", "bissl"} and rows["ft"].difference is None
    seed_values = {
        arm: [r["metrics"]["test"] for r in _ledger(work / f"arms/{arm}/seeds/seeds.json").values()]
        for arm in ("ft", "bissl")
    }
    assert rows["bissl"].mean == pytest.approx(sum(seed_values["bissl"]) / 2)
    assert rows["bissl"].difference == pytest.approx(
        sum(seed_values["bissl"]) / 2 - sum(seed_values["ft"]) / 2
    )
    assert (work / "report" / "comparison.csv").is_file()
    images = referenced_images(report.read_text())
    names = {Path(p).name for p in images}
    assert {"seeds.png", "search_ft.png", "search_bissl.png", "losses_bissl.png"} <= names
    for image in images:
        assert is_png(report.parent / image), image


def test_rerun_redoes_nothing(compared: dict, capsys: pytest.CaptureFixture[str]) -> None:
    work: Path = compared["work"]
    results = sorted(work.glob("arms/*/*/*/*/results.json")) + sorted(
        work.glob("arms/*/*/*/results.json")
    )
    assert len(results) == 8
    stamps = {p: p.stat().st_mtime_ns for p in results}
    exports = {p: p.stat().st_mtime_ns for p in work.glob("prepare/**/export/*")}
    capsys.readouterr()
    argv = [*compared["argv"], "--arms", "ft,bissl", "--num-samples", "2", "--seeds", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 to run" in out and "done before" in out
    assert "| ft |" in out or "ft" in out.split("report:")[0]
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    assert {p: p.stat().st_mtime_ns for p in work.glob("prepare/**/export/*")} == exports


#: Fine-tuned in this process (preparation + one fine-tuning trial each); the new single-level
#: arms (App. B.9.3/B.9.4) go through ``bissl compare`` itself.
DIRECT_ARMS = (
    "random_init",
    "linear_probe",
    "zero_head",
    "noisytune",
    "ij_discarded",
    "nu1",
    "lambda_0.01",
)
RUNNER_ARMS = ("weighted_sum_0.25", "data_mix")


def test_baseline_arms_one_configuration_each(compared: dict) -> None:
    """Every baseline arm prepares and fine-tunes one configuration on the generated data.

    ``bissl compare`` runs the arms of ``RUNNER_ARMS`` (search and seeds on Ray, then the
    report); the others run their preparation (``prepare_arm``) and the search's trainable
    (``finetune_trial``) once each in this process, without a Ray Tune run per arm: the runner
    treats every arm alike once it is prepared (options → search → seeds), which the fixture and
    the runner arms prove, so repeating two Tune runs per arm would add minutes and no check.
    """
    work: Path = compared["work"]
    argv = [*compared["argv"], "--arms", ",".join(RUNNER_ARMS), "--num-samples", "1"]
    assert main([*argv, "--seeds", "1"]) == 0
    seeds = {arm: _ledger(work / f"arms/{arm}/seeds/seeds.json")["0"] for arm in RUNNER_ARMS}
    options = {arm: record["config"]["options"] for arm, record in seeds.items()}
    trial_dirs = {arm: Path(record["config"]["trial_dir"]) for arm, record in seeds.items()}
    metrics = {arm: record["metrics"] for arm, record in seeds.items()}
    table = json.loads((work / "report" / "comparison.json").read_text())
    assert {row["arm"] for row in table["rows"]} == set(RUNNER_ARMS)

    inputs = arm_inputs(build_parser().parse_args(argv))
    for arm in DIRECT_ARMS:
        prepared = prepare_arm(arm, inputs, work / "prepare", log=lambda _: None)
        options[arm] = prepared.options
        trial_dirs[arm] = work / "direct" / arm
        metrics[arm] = finetune_trial(
            {
                "config": str(inputs.finetune_config),
                "options": prepared.options,
                "lr": 0.01,
                "weight_decay": 1e-4,
                "seed": 0,
                "trial_dir": str(trial_dirs[arm]),
            }
        )
    for arm, values in metrics.items():
        assert math.isfinite(values["test"]) and 0 <= values["test"] <= 100, arm
    pretext = compared["pretext"]["backbone"]
    assert options["random_init"]["model.backbone_checkpoint"] is None
    # linear probing: the fine-tuned backbone is exactly the pretext backbone
    assert options["linear_probe"]["model.freeze_backbone"] is True
    probed = load_backbone_state(trial_dirs["linear_probe"] / "best.pth")
    before = load_backbone_state(pretext)
    assert all(torch.equal(before[k], probed[k]) for k in before)
    assert options["zero_head"]["model.zero_init_head"] is True
    # NoisyTune: every multi-element parameter moved by at most scale/2 · std, and it moved
    noisy = load_backbone_state(options["noisytune"]["model.backbone_checkpoint"])
    weight = before["layer1.0.conv1.weight"]
    delta = noisy["layer1.0.conv1.weight"] - weight
    assert 0 < delta.abs().max() <= 0.15 / 2 * weight.std() * (1 + 1e-5)
    assert torch.equal(noisy["bn1.running_mean"], before["bn1.running_mean"])  # buffers kept
    # the BiSSL variants ran with their option (recorded in the exported BiSSL config)
    expected = {
        "ij_discarded": ("discard_implicit_jacobian", True),
        "nu1": ("upper_steps", 1),
        "lambda_0.01": ("lam", 0.01),
    }
    for arm, (key, value) in expected.items():
        exported = next((work / "prepare" / arm / "export").glob("BiSSL_*_config_id-*.json"))
        assert json.loads(exported.read_text())["bissl"][key] == value, arm
        lower = options[arm]["model.backbone_checkpoint"]
        assert Path(lower).parent == work / "prepare" / arm / "export"
    # the single-level baselines: their own stage, its budget from the BiSSL options (T = 1,
    # N_L = 1, N_U = 2), the weighted sum from the shared warm-up head, and a backbone that moved
    single_level = (
        ("weighted_sum_0.25", "weighted_sum", "WeightedSumLoop", 2),
        ("data_mix", "data_mix", "DataMixLoop", 1),
    )
    for arm, kind, loop, steps in single_level:
        export = work / "prepare" / arm / "export"
        assert options[arm]["model.backbone_checkpoint"] == str(export / f"{kind}_backbone.pth")
        run = json.loads((export / f"{kind}_config.json").read_text())
        assert run["steps"] == steps and run["train_cfg"]["type"] == loop
        trained = load_backbone_state(export / f"{kind}_backbone.pth")
        assert any(not torch.equal(before[k], trained[k]) for k in before), arm
    # data_mix had no --data-mix-config: its config was derived from --bissl-config
    derived = work / "prepare" / "data_mix_bissl_simclr_resnet18_synthetic.py"
    assert "DataMixLoop" in derived.read_text()
    weighted = work / "prepare/weighted_sum_0.25/export/weighted_sum_config.json"
    weighted_run = json.loads(weighted.read_text())
    assert weighted_run["train_cfg"]["w"] == 0.25
    head = weighted_run["model"]["task"]["head_checkpoint"]
    assert head == str(work / "prepare/warmup/export/head.pth")


def test_arm_names_are_checked() -> None:
    assert parse_arms("ft, bissl,lambda_0.1") == ["ft", "bissl", "lambda_0.1"]
    with pytest.raises(ConfigError, match="unknown arm 'fine'"):
        parse_arms("ft,fine")
    assert parse_arms("weighted_sum,weighted_sum_0.1,data_mix") == [
        "weighted_sum",
        "weighted_sum_0.1",
        "data_mix",
    ]
    with pytest.raises(ConfigError, match="must be in"):
        parse_arms("weighted_sum_2")
    with pytest.raises(ConfigError, match="not a number"):
        parse_arms("lambda_x")
    with pytest.raises(ConfigError, match="twice"):
        parse_arms("ft,ft")


def test_killed_compare_resumes_without_redoing_finished_trials(
    setup: dict, local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL ``bissl compare`` (and its Ray) mid-search; the same command finishes the rest."""
    # 2 configurations, one trial at a time (--num-cpus 1): killed after the first one finished
    argv = [*setup["argv"], "--arms", "ft", "--num-samples", "2", "--seeds", "1"]
    work = tmp_path / "killed"
    argv[argv.index("--work-dir") + 1] = str(work)
    ledger_path = work / "arms" / "ft" / "search" / "search.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "bissl_dense.cli", *argv, "--num-cpus", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes Ray's processes too
    )
    try:
        deadline = time.monotonic() + 300
        finished: dict = {}
        while time.monotonic() < deadline and process.poll() is None:
            if ledger_path.exists():
                finished = _ledger(ledger_path)
                if finished:
                    break
            time.sleep(0.2)
        output = process.stdout.read().decode() if process.poll() is not None else ""
        assert len(finished) == 1, output[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    before = _ledger(ledger_path)
    stamps = {
        key: (Path(r["config"]["trial_dir"]) / "results.json").stat().st_mtime_ns
        for key, r in before.items()
    }
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"[ft search] {len(before)}/2 done" in out and f"{2 - len(before)} to run" in out
    after = _ledger(ledger_path)
    assert sorted(after) == ["0000", "0001"]
    for key, record in before.items():  # finished before the kill: kept, never trained again
        assert after[key] == record
        results = Path(record["config"]["trial_dir"]) / "results.json"
        assert results.stat().st_mtime_ns == stamps[key]
    assert (work / "report" / "report.md").is_file()

"""The prepared GPU script (``python -m bissl_dense.benchmarks.device_check``), tested on the CPU.

A ``--device cpu --tiny`` run goes through every section, each on real models and generated data
(the same code as on a GPU, toy sizes), and reports finite losses, positive timings and each
section's figures in one JSON, on stdout and in ``--json``. The runner's own logic is tested with
stand-in sections: a section that raises, reports a non-finite loss or runs past its budget fails
alone (recorded in the JSON, exit status 1) while the others run; past the deadline the rest are
skipped; a missing GPU is one error, not a traceback.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from bissl_dense.benchmarks import device_check
from bissl_dense.core.bilevel import BilevelTrainer

NAMES = [name for name, _, _ in device_check.SECTIONS]
BASELINES = {
    "gradient",
    "finetune_step",
    "upper_step_without_solve",
    "per_step/recompute",
    "reference (K recomputed products)",
}


@pytest.mark.slow
def test_tiny_cpu_run_reports_every_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "device_check.json"
    original_step = BilevelTrainer.train_step
    # one thread: on a loaded 2-core machine two threads are several times slower; budgets
    # scaled since the sections' caps are set for a GPU
    argv = ["--device", "cpu", "--tiny", "--threads", "1", "--budget-scale", "10"]
    status = device_check.main([*argv, "--deadline", "1800", "--json", str(out)])
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result  # stdout carries the JSON only
    errors = {k: v.get("error") for k, v in result["sections"].items() if v["status"] != "ok"}
    assert status == 0 and result["ok"], errors
    assert list(result["sections"]) == NAMES
    assert BilevelTrainer.train_step is original_step  # the step recorder was taken off

    environment = result["environment"]
    assert environment["torch"] == torch.__version__ and result["gpu_name"] is None
    assert environment["requested_device"] == "cpu" and environment["packages"]["detectron2"]
    for name, section in result["sections"].items():
        assert section["seconds"] > 0 and math.isfinite(section["peak_memory_mib"]), name
        assert section["losses_finite"], name

    fp32 = result["sections"]["implicit_fp32"]["figures"]
    assert fp32["setup"]["arch"] == "resnet18" and fp32["setup"]["autocast"] is None
    timed = fp32["median_seconds_per_upper_step"]
    assert set(timed) == BASELINES | set(device_check.IMPLICIT_CASES)
    assert all(s > 0 for s in timed.values())
    assert fp32["ratio_to_reference"]["reference (K recomputed products)"] == 1.0
    assert set(fp32["bissl_upper_step_over_finetune_step"]) >= set(device_check.IMPLICIT_CASES)
    assert fp32["one_product_seconds"]["jvp"] > 0
    bf16 = result["sections"]["implicit_bf16"]["figures"]
    assert bf16["setup"]["autocast"] == "bfloat16"
    assert set(bf16["median_seconds_per_upper_step"]) == BASELINES | set(
        device_check.IMPLICIT_BF16_CASES
    )

    pretext = result["sections"]["pretext"]
    settings = {"fp32", "fp32 + channels-last", "bf16", "bf16 + channels-last"}
    assert set(pretext["figures"]["images_per_second"]) == settings == set(pretext["losses"])
    assert all(v > 0 for v in pretext["figures"]["images_per_second"].values())
    assert pretext["figures"]["speedup_over_fp32"]["fp32"] == 1.0

    for name in ("classification", "classification_bf16", "detection", "segmentation"):
        section = result["sections"][name]
        # one alternation of one lower and one upper step, each with its loss and its time
        assert section["figures"]["steps"] == 2, name
        assert {k: len(v) for k, v in section["losses"].items()} == {"lower": 1, "upper": 1}
        assert all(math.isfinite(v[0]) for v in section["losses"].values()), name
        assert all(t > 0 for t in section["figures"]["median_seconds_per_step"].values()), name


def _fake(calls: list[str], name: str, output: dict[str, Any] | None = None, wait: float = 0):
    def section(ctx: device_check.Context) -> dict[str, Any]:
        calls.append(name)
        assert ctx.device == "cpu" and ctx.tiny and ctx.work_dir.is_dir()
        time.sleep(wait)
        return output or {"figures": {"images_per_second": 10.0}, "losses": {"lower": [1.5]}}

    return section


def _stand_ins(monkeypatch: pytest.MonkeyPatch, **special: Any) -> list[str]:
    """Replace every section by a quick stand-in (``special``: name -> function)."""
    calls: list[str] = []
    for name, _, function_name in device_check.SECTIONS:
        monkeypatch.setattr(device_check, function_name, special.get(name) or _fake(calls, name))
    return calls


def _run(tmp_path: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "check.json"
    status = device_check.main(["--device", "cpu", "--tiny", "--json", str(out), *argv])
    return status, json.loads(out.read_text())


def test_a_failing_section_is_recorded_and_the_others_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: device_check.Context) -> dict[str, Any]:
        raise RuntimeError("detectron2 died")

    calls = _stand_ins(monkeypatch, detection=broken)
    status, result = _run(tmp_path)
    assert status == 1 and not result["ok"]
    assert calls == [n for n in NAMES if n != "detection"]  # every other section ran, in order
    detection = result["sections"]["detection"]
    assert detection["status"] == "failed"
    assert detection["error"] == "RuntimeError: detectron2 died"
    for name in calls:
        assert result["sections"][name]["status"] == "ok"
        assert result["sections"][name]["figures"] == {"images_per_second": 10.0}


def test_a_non_finite_loss_fails_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    nan_loss = {"figures": {"images_per_second": 3.0}, "losses": {"bf16": math.nan}}
    _stand_ins(monkeypatch, pretext=_fake(calls, "pretext", nan_loss))
    status, result = _run(tmp_path)
    pretext = result["sections"]["pretext"]
    assert status == 1 and pretext["status"] == "failed" and not pretext["losses_finite"]
    assert pretext["error"] == "non-finite: losses/bf16=nan"
    assert all(r["status"] == "ok" for n, r in result["sections"].items() if n != "pretext")
    # --sections: only those, in the usual order
    status, result = _run(tmp_path, "--sections", "segmentation,classification")
    assert status == 0 and list(result["sections"]) == ["classification", "segmentation"]


def test_budget_and_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stand_ins(monkeypatch)
    slow = _fake(calls, "implicit_fp32", wait=30)
    monkeypatch.setattr(device_check, "section_implicit_fp32", slow)
    # budget: 180 s x 0.005 = 0.9 s, then the other sections run
    start = time.perf_counter()
    status, result = _run(
        tmp_path, "--budget-scale", "0.005", "--sections", "implicit_fp32,pretext"
    )
    assert time.perf_counter() - start < 20
    first = result["sections"]["implicit_fp32"]
    assert status == 1 and first["status"] == "failed"
    assert first["error"].startswith("SectionTimeout: stopped after its time budget")
    assert result["sections"]["pretext"]["status"] == "ok"
    # deadline: the slow first section is stopped at it, the rest are skipped
    status, result = _run(tmp_path, "--deadline", "2")
    assert status == 1 and result["sections"]["implicit_fp32"]["status"] == "failed"
    assert {result["sections"][n]["status"] for n in NAMES[1:]} == {"skipped: time"}


def test_stage_figures_refuse_a_short_run_or_the_wrong_device() -> None:
    steps = [
        {"phase": "lower", "loss": 1.0, "seconds": 0.1, "device": "cpu"},
        {"phase": "upper", "loss": 2.0, "seconds": 0.3, "device": "cpu"},
    ]
    figures = device_check.stage_figures(steps, 2, "cpu")
    assert figures["losses"] == {"lower": [1.0], "upper": [2.0]}
    assert figures["figures"]["median_seconds_per_step"] == {"lower": 0.1, "upper": 0.3}
    with pytest.raises(RuntimeError, match="ran 2 BiSSL steps, expected 3"):
        device_check.stage_figures(steps, 3, "cpu")
    with pytest.raises(RuntimeError, match=r"on \['cpu'\], not on cuda"):
        device_check.stage_figures(steps, 2, "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_no_gpu_is_one_error_and_still_a_json(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    assert device_check.main(["--json", str(out)]) == 2  # --device cuda, the default
    result = json.loads(out.read_text())
    assert result["error"].startswith("--device cuda: not usable here")
    assert result["sections"] == {} and result["ok"] is False

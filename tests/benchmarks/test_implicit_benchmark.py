"""The implicit-Jacobian benchmark runs end to end (tiny setting) and its figures are consistent:
the amortised exact stage equals the per-step and recompute solves on a real ResNet-18, every
case is timed, MINRES never reports a residual above 1."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bissl_dense.benchmarks import implicit


def test_tiny_run_reports_consistent_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--batch", "4", "--size", "16", "--repeats", "1", "--iters", "2"]
    argv += ["--upper-steps", "2", "--reference-iters", "4", "--quality-solves", "2"]
    argv += ["--json", str(out)]
    result = implicit.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    timed = result["median_seconds_per_upper_step"]
    assert {"gradient", "finetune_step", "upper_step_without_solve", "per_step/recompute"} <= set(
        timed
    )
    assert {"stage/exact", "stage/finite_difference", "stage/exact/recycled"} <= set(timed)
    assert {"stage/jvp/minres", "reference (K recomputed products)"} <= set(timed)
    assert all(s > 0 for s in timed.values())
    assert result["ratio_to_recompute"]["per_step/recompute"] == 1.0
    product = result["one_product_seconds"]
    assert product["exact"] > 0 and product["recompute"] > 0 and product["jvp"] > 0
    assert result["exact_floor_ratio_to_recompute"] == product["exact"] / product["recompute"]
    errors = result["relative_error"]
    assert errors["per_step/exact_vs_recompute"] < 1e-5
    assert errors["stage/exact_vs_per_step/exact (solves 1 and N_U, max)"] < 1e-5
    # the written-out reference solve is bissl's cg="layerwise" (exact and recomputed products)
    assert errors["reference_vs_cg/layerwise (solve 1)"] < 1e-5
    # float32 rounding of two exact products, through MINRES on BatchNorm over 4 images of 16 px
    # (||H|| ~ 1e17); the products agree to 2e-15 in float64 (tests/core/test_hvp.py)
    assert errors["stage/jvp_vs_exact (minres, mean)"] < 1e-2
    assert result["ratio_to_reference"]["reference (K recomputed products)"] == 1.0
    residuals = result["relative_residual"]
    for name in ("minres", "minres/warm_start", "recycled (stage/exact/recycled)"):
        assert residuals[name]["max"] <= 1.0 + 1e-4, name
    assert all(math.isfinite(r["max"] if isinstance(r, dict) else r) for r in residuals.values())
    assert set(result["bissl_upper_step_over_finetune_step"]) >= {
        "stage/exact",
        "stage/finite_difference",
    }


def test_quality_only_run_after_pretraining_reports_the_solver_comparison() -> None:
    """``--quality-only --pretrain-steps``: no timings; the pretraining lowered the SimCLR loss;
    the same solver comparison as a full run (MINRES never above a residual of 1)."""
    argv = ["--batch", "4", "--size", "16", "--iters", "2", "--upper-steps", "2"]
    argv += ["--reference-iters", "4", "--quality-solves", "2", "--pretrain-steps", "3"]
    result = implicit.main([*argv, "--quality-only"])
    assert "median_seconds_per_upper_step" not in result
    assert result["setup"]["pretrain_steps"] == 3 and result["setup"]["repeats"] == 0
    first, last = result["setup"]["pretrain_loss_first_last"]
    assert math.isfinite(first) and math.isfinite(last)
    residuals = result["relative_residual"]
    assert {"cg/global (stage/exact)", "cg/layerwise", "minres"} <= set(residuals)
    assert residuals["minres"]["max"] <= 1.0 + 1e-4
    assert set(result["upper_gradient_relative_error"]) == {
        k for k, v in residuals.items() if isinstance(v, dict)
    }
    assert "cg/global (per_step/recompute)" not in residuals  # not run: only the stage's solves

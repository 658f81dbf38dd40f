"""The implicit-Jacobian benchmark runs end to end (tiny setting) and its figures are consistent:
the reused-graph products equal the recomputed ones on a real ResNet-18, every case is timed."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bissl_dense.benchmarks import implicit


def test_tiny_run_reports_consistent_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = implicit.main(
        ["--batch", "4", "--size", "16", "--repeats", "1", "--iters", "2", "--json", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    cases = {"gradient", "bissl_upper_step", "finetune_step"} | {
        f"ij/{hvp}/{cg}" for hvp in implicit.HVP_MODES for cg in implicit.CG_MODES
    }
    assert set(result["median_seconds"]) == cases
    assert all(s > 0 for s in result["median_seconds"].values())
    for cg in implicit.CG_MODES:
        assert result["relative_error"][f"exact_vs_recompute/{cg}"] < 1e-5
        assert result["ratio_to_recompute"][f"ij/recompute/{cg}"] == 1.0
        assert math.isfinite(result["relative_error"][f"finite_difference_vs_exact/{cg}"])
    assert all(math.isfinite(r) for r in result["relative_residual"].values())

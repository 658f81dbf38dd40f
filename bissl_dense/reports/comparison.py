"""The report of a ``bissl compare`` run, the same for every task (issue 9, SPEC §4).

From the arms' results (``bissl_dense.experiments.ArmResult``: a search and seed runs each) it
writes, under ``out_dir``:

- ``comparison.{md,csv,json}``: the table (mean ± std per arm, difference to the reference arm,
  exact permutation-test p-value, significance at ``alpha``);
- ``figures/seeds.png``: each arm's per-seed test results;
- ``figures/search_<arm>.png``: each arm's search, lr × wd coloured by the validation metric;
- ``figures/losses_<name>.png``: loss curves of both BiSSL levels for each given BiSSL run;
- ``report.md``: all of the above, plus the chosen hyper-parameters, in one Markdown file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bissl_dense.reports.markdown import MarkdownReport
from bissl_dense.reports.plots import plot_bissl_loss_curves, plot_search_scatter, plot_seed_results
from bissl_dense.reports.tables import compare_arms, write_comparison

if TYPE_CHECKING:
    from bissl_dense.experiments.seeds import ArmResult

__all__ = ["write_comparison_report"]


def write_comparison_report(
    out_dir: str | Path,
    arms: Mapping[str, ArmResult],
    *,
    title: str,
    test_metric: str = "test_top1",
    reference: str = "ft",
    alpha: float = 0.05,
    bissl_runs: Mapping[str, str | Path] | None = None,
    digits: int = 2,
) -> Path:
    """Write the tables, figures and ``report.md`` (see the module docstring); return its path.

    ``arms`` maps an arm name to its result; the validation metric and mode of each search are
    taken from the search itself. ``bissl_runs`` maps a name to the work directory of a BiSSL
    run whose mmengine scalar logs hold ``lower/...loss`` and ``upper/...loss`` keys.
    """
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    values = {name: arm.seeds.values(test_metric) for name, arm in arms.items()}
    table = compare_arms(values, reference=reference, metric=test_metric, alpha=alpha)
    write_comparison(table, out_dir, "comparison", digits)

    report = MarkdownReport(out_dir / "report.md", title)
    report.section("Comparison").table(table, digits)
    report.image(plot_seed_results(values, figures / "seeds.png", test_metric), "per-seed results")
    report.section("Hyper-parameter searches")
    for name, arm in arms.items():
        search = arm.search
        report.section(f"{name}", level=3)
        report.key_values(
            {
                "configurations": len(search.trials),
                f"best {search.metric}": search.best.metrics[search.metric],
                **search.best_config,
                "seeds": len(arm.seeds.trials),
            }
        )
        scatter = plot_search_scatter(
            search.table(),
            figures / f"search_{name}.png",
            search.metric,
            search.mode,
            title=f"{name}: {len(search.trials)} configurations",
        )
        report.image(scatter, f"search of {name}: lr × weight decay, coloured by {search.metric}")
    if bissl_runs:
        report.section("BiSSL training")
        for name, work_dir in bissl_runs.items():
            curves = plot_bissl_loss_curves(work_dir, figures / f"losses_{name}.png")
            report.image(curves, f"{name}: losses of the lower and upper level")
    return report.write()

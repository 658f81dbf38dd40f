"""The comparison table of a ``bissl compare`` run: one row per arm (SPEC §4, paper Tables 1–3).

Each row holds the arm's mean ± std over seeds, its difference to the reference arm (``ft``,
conventional fine-tuning, by default) and the exact permutation-test p-value of that difference;
p < alpha (0.05 in the paper) is marked. The same table is written as Markdown (for the report),
CSV (for spreadsheets) and JSON (for programs; it keeps the per-seed values and reads back with
``ComparisonTable.from_json``). Files are written atomically, so a killed run never leaves a
half-written table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bissl_dense.fileio import atomic_write_text
from bissl_dense.reports.statistics import exact_permutation_test, summarize

__all__ = ["ArmRow", "ComparisonTable", "compare_arms", "write_comparison"]

_CSV_FIELDS = ("arm", "n", "mean", "std", "difference", "p_value", "significant")


@dataclass(frozen=True)
class ArmRow:
    """One arm's results; ``difference``/``p_value``/``significant`` are None for the reference."""

    arm: str
    n: int
    mean: float
    std: float
    difference: float | None
    p_value: float | None
    significant: bool | None
    values: tuple[float, ...]


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _format_p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.4f}"


@dataclass(frozen=True)
class ComparisonTable:
    """Rows (reference arm first) plus what they measure; see ``compare_arms``."""

    metric: str
    reference: str
    alpha: float
    rows: tuple[ArmRow, ...]

    def row(self, arm: str) -> ArmRow:
        for row in self.rows:
            if row.arm == arm:
                return row
        raise KeyError(f"no arm {arm!r} in the table; arms: {[r.arm for r in self.rows]}")

    def to_markdown(self, digits: int = 2) -> str:
        """A GitHub-flavoured Markdown table with a one-line legend below it."""
        lines = [
            f"| arm | n | {self.metric} (mean ± std) | Δ vs {self.reference} | p |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            std = "n/a" if math.isnan(row.std) else f"{row.std:.{digits}f}"
            if row.difference is None:
                difference = p_value = "—"
            else:
                difference = f"{row.difference:+.{digits}f}"
                p_value = "n/a" if row.p_value is None else _format_p(row.p_value)
                p_value += " *" if row.significant else ""
            lines.append(
                f"| {row.arm} | {row.n} | {row.mean:.{digits}f} ± {std} | {difference} | "
                f"{p_value} |"
            )
        lines.append("")
        lines.append(
            f"Δ: difference of means to `{self.reference}`. p: exact two-sample permutation test "
            f"of the difference of means over all C(n+m, n) splits; * marks p < {self.alpha}."
        )
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            record = {field: getattr(row, field) for field in _CSV_FIELDS}
            writer.writerow({k: "" if v is None else v for k, v in record.items()})
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            record = asdict(row)
            record["std"] = _finite_or_none(row.std)  # JSON has no NaN
            record["values"] = list(row.values)
            rows.append(record)
        return {
            "metric": self.metric,
            "reference": self.reference,
            "alpha": self.alpha,
            "rows": rows,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ComparisonTable:
        data = json.loads(text)
        rows = []
        for record in data["rows"]:
            record = dict(record)
            record["std"] = float("nan") if record["std"] is None else record["std"]
            record["values"] = tuple(record["values"])
            rows.append(ArmRow(**record))
        return cls(data["metric"], data["reference"], data["alpha"], tuple(rows))


def compare_arms(
    results: Mapping[str, Sequence[float]],
    *,
    reference: str = "ft",
    metric: str = "top-1",
    alpha: float = 0.05,
) -> ComparisonTable:
    """Summarise each arm and test every other arm against ``reference`` (paper App. B.6).

    ``results`` maps an arm name to its per-seed test metrics (of the best-validation checkpoint).
    Arms keep their order, with the reference moved first.
    """
    if reference not in results:
        raise ValueError(
            f"reference arm {reference!r} has no results; arms with results: {sorted(results)}"
        )
    reference_values = results[reference]
    rows = []
    for arm in [reference, *(a for a in results if a != reference)]:
        values = results[arm]
        try:
            summary = summarize(values)
        except ValueError as error:
            raise ValueError(f"arm {arm!r}: {error}") from None
        if arm == reference:
            difference = p_value = significant = None
        else:
            difference = summary.mean - summarize(reference_values).mean
            p_value = exact_permutation_test(values, reference_values)
            significant = p_value < alpha
        rows.append(
            ArmRow(
                arm=arm,
                n=summary.n,
                mean=summary.mean,
                std=summary.std,
                difference=difference,
                p_value=p_value,
                significant=significant,
                values=tuple(float(v) for v in values),
            )
        )
    return ComparisonTable(metric=metric, reference=reference, alpha=alpha, rows=tuple(rows))


def write_comparison(
    table: ComparisonTable, directory: str | Path, stem: str = "comparison", digits: int = 2
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` atomically; return their paths."""
    directory = Path(directory)
    paths = {suffix: directory / f"{stem}.{suffix}" for suffix in ("md", "csv", "json")}
    atomic_write_text(paths["md"], table.to_markdown(digits))
    atomic_write_text(paths["csv"], table.to_csv())
    atomic_write_text(paths["json"], table.to_json())
    return paths

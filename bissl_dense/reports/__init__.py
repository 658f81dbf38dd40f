"""Results of the experiments of every task: statistics, tables, plots and the Markdown report.

Importable without Ray and without a display; matplotlib is imported only when a figure is drawn.
"""

from bissl_dense.reports.comparison import write_comparison_report
from bissl_dense.reports.markdown import MarkdownReport, is_png, referenced_images
from bissl_dense.reports.statistics import Summary, exact_permutation_test, summarize
from bissl_dense.reports.tables import ArmRow, ComparisonTable, compare_arms, write_comparison

__all__ = [
    "ArmRow",
    "ComparisonTable",
    "MarkdownReport",
    "Summary",
    "compare_arms",
    "exact_permutation_test",
    "is_png",
    "referenced_images",
    "summarize",
    "write_comparison",
    "write_comparison_report",
]

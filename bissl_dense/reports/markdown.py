"""One Markdown report builder for every task (classification, detection, segmentation).

A report is a title, sections, paragraphs, key/value lists, comparison tables and PNG figures.
Figures are referenced by their path relative to the report file, so the report directory can be
moved or archived as a whole and still renders (GitHub, VS Code, pandoc). ``image`` refuses a
file that does not exist or is not a PNG at the time it is added, so a finished report never
points at a missing picture. ``write`` is atomic.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from bissl_dense.fileio import atomic_write_text
from bissl_dense.reports.tables import ComparisonTable

__all__ = ["PNG_SIGNATURE", "MarkdownReport", "is_png", "referenced_images"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def is_png(path: str | Path) -> bool:
    """Whether ``path`` is a file starting with the PNG signature."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def referenced_images(markdown: str) -> list[str]:
    """The targets of the ``![...](target)`` image links of a Markdown text (decoded), in order."""
    return [unquote(target) for target in _IMAGE_LINK.findall(markdown)]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


class MarkdownReport:
    """Builds ``path`` (a ``.md`` file) block by block; ``write()`` renders and saves it."""

    def __init__(self, path: str | Path, title: str) -> None:
        self.path = Path(path)
        self._blocks: list[str] = [f"# {title}"]

    def section(self, title: str, level: int = 2) -> MarkdownReport:
        if not 2 <= level <= 6:
            raise ValueError(f"section level must be 2..6 (1 is the title), got {level}")
        self._blocks.append(f"{'#' * level} {title}")
        return self

    def paragraph(self, text: str) -> MarkdownReport:
        self._blocks.append(text.strip())
        return self

    def key_values(self, values: Mapping[str, Any]) -> MarkdownReport:
        """A two-column table, e.g. the chosen hyper-parameters or run settings."""
        lines = ["| | |", "|---|---|"]
        lines += [f"| {key} | {_format_value(value)} |" for key, value in values.items()]
        self._blocks.append("\n".join(lines))
        return self

    def table(self, table: ComparisonTable | str, digits: int = 2) -> MarkdownReport:
        """A comparison table (rendered with its legend) or a ready Markdown table."""
        text = table.to_markdown(digits) if isinstance(table, ComparisonTable) else table
        self._blocks.append(text.strip())
        return self

    def image(self, png: str | Path, caption: str) -> MarkdownReport:
        """Embed an existing PNG by its path relative to the report's directory."""
        png = Path(png)
        if not is_png(png):
            reason = "does not exist" if not png.exists() else "is not a PNG file"
            raise FileNotFoundError(f"report {self.path}: figure {png} {reason}")
        relative = Path(os.path.relpath(png.resolve(), self.path.parent.resolve())).as_posix()
        self._blocks.append(f"![{caption}]({quote(relative)})\n\n*{caption}*")
        return self

    def render(self) -> str:
        return "\n\n".join(self._blocks) + "\n"

    def write(self) -> Path:
        atomic_write_text(self.path, self.render())
        return self.path

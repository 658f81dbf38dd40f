"""Plots of a comparison run, and the reader of mmengine's scalar logs they are drawn from.

All figures are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot state, no
display needed, safe in worker processes) and written atomically as PNG, so a report never
references a half-written image. Every ``plot_*`` function returns the path it wrote.

Scalar logs: mmengine's ``LocalVisBackend`` appends one JSON object per line to
``<work_dir>/<timestamp>/vis_data/scalars.json`` (each object is the logged scalars plus ``step``;
``LoggerHook`` writes the training scalars every ``interval`` iterations and the validation
metrics after each validation). A resumed run starts a new ``<timestamp>`` directory, so a run's
log is the concatenation of those files in time order, where a later file replaces the points
an earlier one logged from the step it resumed at onwards.

detectron2 runs log the same way to ``<OUTPUT_DIR>/metrics.json`` (its ``JSONWriter``: one JSON
object per line with ``iteration`` instead of ``step``, appended to across resumes, so there a
key's step going back marks the resume and the later lines replace the earlier ones from that
step on); a work directory without mmengine logs is read from there.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bissl_dense.fileio import atomic_write_bytes

__all__ = [
    "find_scalar_logs",
    "load_scalar_series",
    "plot_bissl_loss_curves",
    "plot_loss_curves",
    "plot_search_scatter",
    "plot_seed_results",
    "plot_tsne",
    "read_scalar_log",
]

Series = tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------- scalar logs


def read_scalar_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of one ``scalars.json`` (JSON lines).

    A last line cut short (a run killed while writing) is skipped; a malformed line elsewhere is
    an error naming the file and line.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(
                f"{path}:{number}: not a JSON object ({error.msg}): {line[:80]!r}"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {line[:80]!r}")
        records.append(record)
    return records


def find_scalar_logs(work_dir: str | Path) -> list[Path]:
    """``<work_dir>/<timestamp>/vis_data/scalars.json`` of every (re)start, oldest first.

    Without any, detectron2's ``<work_dir>/metrics.json`` (one file over all restarts).
    """
    work_dir = Path(work_dir)
    logs = sorted(work_dir.glob("*/vis_data/scalars.json"), key=lambda p: p.parent.parent.name)
    if not logs and (work_dir / "metrics.json").is_file():
        logs = [work_dir / "metrics.json"]
    if not logs:
        raise FileNotFoundError(
            f"no scalar log under {work_dir} (expected mmengine's <timestamp>/vis_data/"
            "scalars.json or detectron2's metrics.json; is this the run's work_dir / OUTPUT_DIR, "
            "and does its visualizer use LocalVisBackend?)"
        )
    return logs


def load_scalar_series(
    work_dir: str | Path, keys: Iterable[str] | None = None, prefix: str | None = None
) -> dict[str, Series]:
    """Per key, the (steps, values) of a run, merged over restarts (see the module docstring).

    ``keys`` selects keys exactly; ``prefix`` selects every key starting with it; with neither,
    every numeric key except ``step``.
    """
    wanted = set(keys) if keys is not None else None
    merged: dict[str, list[tuple[float, float]]] = {}
    for log in find_scalar_logs(work_dir):
        for record in read_scalar_log(log):
            step = record.get("step", record.get("iteration"))  # mmengine / detectron2
            if step is None:
                continue
            for key, value in record.items():
                if (
                    key in ("step", "iteration")
                    or isinstance(value, bool)
                    or not isinstance(value, int | float)
                ):
                    continue
                if wanted is not None and key not in wanted:
                    continue
                if prefix is not None and not key.startswith(prefix):
                    continue
                points = merged.setdefault(key, [])
                # A step at or before the last one is a resumed run (a new mmengine file, or
                # more lines appended to detectron2's one file): it replaces from there on.
                if points and points[-1][0] >= step:
                    points[:] = [p for p in points if p[0] < step]
                points.append((float(step), float(value)))
    series = {}
    for key, points in merged.items():
        points.sort(key=lambda p: p[0])
        steps, values = zip(*points, strict=True)
        series[key] = (np.asarray(steps), np.asarray(values))
    if wanted is not None and (missing := wanted - set(series)):
        raise KeyError(
            f"keys {sorted(missing)} are not in the scalar logs of {work_dir}; logged keys "
            f"with values: {sorted(series) or 'none'}"
        )
    return series


# ----------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(figure: Any, path: str | Path, dpi: int = 120) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_seed_results(
    results: Mapping[str, Sequence[float]], path: str | Path, metric: str = "test top-1"
) -> Path:
    """Box plot per arm with every seed's result as a point and the mean as a line."""
    if not results:
        raise ValueError("no arms to plot")
    arms = list(results)
    figure = _figure(max(4.4, 1.2 + 1.1 * len(arms)), 3.6)
    axes = figure.subplots()
    data = [np.asarray(results[arm], dtype=float) for arm in arms]
    positions = np.arange(1, len(arms) + 1)
    axes.boxplot(
        data, positions=positions, widths=0.5, showfliers=False, showmeans=True, meanline=True
    )
    jitter = np.random.default_rng(0)  # fixed: the same results give the same picture
    for position, values in zip(positions, data, strict=True):
        x = position + jitter.uniform(-0.12, 0.12, size=values.size)
        axes.scatter(x, values, s=16, zorder=3, alpha=0.8)
    axes.set_xticks(positions, arms)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per seed")
    axes.set_xlabel("box: quartiles, solid: median, dashed: mean", fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def plot_search_scatter(
    trials: Sequence[Mapping[str, Any]],
    path: str | Path,
    metric: str,
    mode: str = "max",
    x: str = "lr",
    y: str = "weight_decay",
    title: str | None = None,
) -> Path:
    """The search's configurations on log axes, coloured by ``metric``; the best one starred.

    ``trials`` are flat mappings holding ``x``, ``y`` and ``metric`` (a trial without a finite
    metric, e.g. a diverged run, is drawn as a grey cross).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if not trials:
        raise ValueError("no trials to plot")
    for index, trial in enumerate(trials):
        if x not in trial or y not in trial:
            raise KeyError(f"trial {index} lacks {x!r} or {y!r}: keys {sorted(trial)}")
    xs = np.array([float(t[x]) for t in trials])
    ys = np.array([float(t[y]) for t in trials])
    values = np.array([float(t.get(metric, math.nan)) for t in trials])
    finite = np.isfinite(values)
    figure = _figure(5.2, 4.0)
    axes = figure.subplots()
    axes.set_xscale("log")
    axes.set_yscale("log")
    if finite.any():
        points = axes.scatter(
            xs[finite],
            ys[finite],
            c=values[finite],
            cmap="viridis",
            s=36,
            edgecolors="black",
            linewidths=0.3,
        )
        figure.colorbar(points, ax=axes, label=metric)
        best = np.flatnonzero(finite)[
            np.argmax(values[finite]) if mode == "max" else np.argmin(values[finite])
        ]
        axes.scatter(
            [xs[best]],
            [ys[best]],
            marker="*",
            s=260,
            facecolors="none",
            edgecolors="red",
            linewidths=1.5,
            label=f"best {metric} = {values[best]:.4g}",
        )
        axes.legend(loc="best", fontsize="small")
    if (~finite).any():
        axes.scatter(xs[~finite], ys[~finite], marker="x", color="grey", label="no result")
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.set_title(title or f"search: {len(trials)} configurations")
    axes.grid(alpha=0.3, which="both")
    return _save(figure, path)


def plot_loss_curves(
    panels: Mapping[str, Mapping[str, Series]], path: str | Path, xlabel: str = "iteration"
) -> Path:
    """One panel per group (e.g. the lower and the upper BiSSL level), one line per key."""
    if not panels:
        raise ValueError("no loss curves to plot")
    figure = _figure(4.6 * len(panels), 3.4)
    axes_list = np.atleast_1d(figure.subplots(1, len(panels)))
    for axes, (title, series) in zip(axes_list, panels.items(), strict=True):
        for key, (steps, values) in series.items():
            axes.plot(steps, values, label=key, linewidth=1.2)
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("loss")
        axes.grid(alpha=0.3)
        if series:
            axes.legend(fontsize="small")
    return _save(figure, path)


def plot_bissl_loss_curves(
    work_dir: str | Path,
    path: str | Path,
    lower_prefix: str = "lower/",
    upper_prefix: str = "upper/",
) -> Path:
    """Loss curves of both BiSSL levels from a run's mmengine scalar logs.

    Every logged key starting with ``lower_prefix`` / ``upper_prefix`` and containing "loss" is
    drawn in the panel of its level.
    """
    panels = {}
    for title, prefix in (
        ("lower level (pretext)", lower_prefix),
        ("upper level (downstream)", upper_prefix),
    ):
        series = load_scalar_series(work_dir, prefix=prefix)
        panels[title] = {key: s for key, s in series.items() if "loss" in key}
    if not any(panels.values()):
        raise KeyError(
            f"no loss keys starting with {lower_prefix!r} or {upper_prefix!r} in the scalar logs "
            f"of {work_dir}"
        )
    return plot_loss_curves(panels, path)


def plot_tsne(
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Side-by-side 2-D embeddings (e.g. pretext vs BiSSL backbone), points coloured by class.

    ``embeddings`` maps a panel title to (points of shape (n, 2), integer labels of shape (n,)).
    The same class has the same colour in every panel.
    """
    if not embeddings:
        raise ValueError("no embeddings to plot")
    all_labels = np.concatenate([np.asarray(labels) for _, labels in embeddings.values()])
    num_classes = int(all_labels.max()) + 1 if all_labels.size else 1
    # class k gets colour k of a qualitative map (tab10/tab20); beyond 20 classes a continuous one
    cmap, colours = (
        ("tab10", 10)
        if num_classes <= 10
        else ("tab20", 20)
        if num_classes <= 20
        else ("turbo", num_classes)
    )
    figure = _figure(4.4 * len(embeddings), 4.2)
    axes_list = np.atleast_1d(figure.subplots(1, len(embeddings)))
    for axes, (title, (points, labels)) in zip(axes_list, embeddings.items(), strict=True):
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
            raise ValueError(
                f"panel {title!r}: expected (n, 2) points and n labels, got {points.shape} and "
                f"{len(labels)}"
            )
        scatter = axes.scatter(
            points[:, 0],
            points[:, 1],
            c=labels,
            cmap=cmap,
            vmin=-0.5,
            vmax=colours - 0.5,
            s=6,
            alpha=0.8,
        )
        axes.set_title(title)
        axes.set_xticks([])
        axes.set_yticks([])
    if num_classes <= 20:
        handles = scatter.legend_elements(num=list(range(num_classes)))[0]
        names = (
            list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        )
        axes_list[-1].legend(
            handles, names, fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5)
        )
    return _save(figure, path)

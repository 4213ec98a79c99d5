"""Plots of studies: the Pareto front of one study, or the fronts of several on one figure.

Accuracy (val) against the study's first cost objective (latency in ms by default, log scale),
marker area proportional to its next objective (model size by default); every value is read by its
objective's name. Pareto trials are filled and joined by a step line, dominated or infeasible ones
are faded, the teacher is a star and the reference configurations are diamonds. ``.png`` / ``.svg`` /
``.pdf`` go through matplotlib (headless), ``.html`` through plotly (an optional dependency).

Example (not run as a doctest: it needs stored studies)::

    from vitshrink.studies import open_study
    plot_study(open_study("quickstart"), "pareto.png")  # -> PosixPath('pareto.png')
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import pandas as pd

if TYPE_CHECKING:
    from .studies import StudyHandle

STATIC_SUFFIXES = (".png", ".svg", ".pdf")
AXIS_LABELS = {"accuracy": "val accuracy", "latency_ms": "latency (ms, median)", "size_bytes": "size (bytes)",
               "peak_memory_bytes": "peak memory (bytes)", "throughput": "throughput (images/s)", "macs": "MACs"}


class PlotError(ValueError):
    """A plot that cannot be drawn as asked (unknown file type, plotly missing, empty study)."""


def _pyplot():
    """matplotlib's pyplot on the Agg backend, headless: works without a display and in worker processes."""
    matplotlib.use("Agg")
    # lazy: pyplot must come after use("Agg"), and at module level it would set the backend for every importer
    import matplotlib.pyplot as plt

    return plt


def _points(handle: StudyHandle) -> pd.DataFrame:
    """Completed trials with a `pareto` flag, ready to plot."""
    df = handle.trials(states=["COMPLETE"])
    if df.empty:
        raise PlotError(f"study {handle.name!r} has no completed trial to plot yet; run `vitshrink search` first")
    front = set(handle.pareto()["trial"])
    df["pareto"] = df["trial"].isin(front)
    return df


def axes_of(objectives: tuple[str, ...]) -> tuple[str, str, str]:
    """(x, y, marker area) columns of a study's plot: accuracy up, the first cost objective across
    (latency when the study has it), the next objective (else size) as the marker's area.

    Example:
        >>> axes_of(("accuracy", "latency_ms", "size_bytes")), axes_of(("accuracy", "macs"))
        (('latency_ms', 'accuracy', 'size_bytes'), ('macs', 'accuracy', 'size_bytes'))
    """
    rest = [n for n in objectives if n != "accuracy"]
    x = "latency_ms" if "latency_ms" in rest or not rest else rest[0]
    area = next((n for n in rest if n != x), "size_bytes")
    return x, "accuracy", area


def _common_axes(handles: list[StudyHandle]) -> tuple[str, str, str]:
    axes = {h.name: axes_of(h.objectives) for h in handles}
    if len(set(axes.values())) > 1:
        shown = "; ".join(f"{h.name}: {', '.join(h.objectives)}" for h in handles)
        raise PlotError(f"the studies have different objectives ({shown}); plot studies with the same objectives together")
    return next(iter(axes.values()))


def _marker_sizes(size_bytes: pd.Series, largest: float) -> pd.Series:
    # area proportional to the value (bytes by default), the largest (usually the teacher) drawn at 400 pt^2
    return 30 + 370 * size_bytes.astype(float) / largest


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in STATIC_SUFFIXES + (".html",):
        raise PlotError(f"cannot write a plot to {path.name!r}: use a .png, .svg, .pdf or .html file name")
    return suffix


def plot_study(handle: StudyHandle, path: str | Path, title: str | None = None) -> Path:
    """Draw the study's trials and Pareto front to `path` (.png/.svg/.pdf, or .html with plotly).

    Example (not run as a doctest: it needs stored studies)::

        plot_study(open_study("quickstart"), "front.html")
    """
    path = Path(path)
    suffix = _check_suffix(path)
    df = _points(handle)
    x, y, area = axes_of(handle.objectives)
    title = title or (f"{handle.name}: accuracy vs {x} (marker area = {area}); "
                      f"teacher val acc {handle.teacher_accuracy or float('nan'):.3f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        return _plotly([(handle.name, df)], path, title, axes=(x, y, area))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    sizes = _marker_sizes(df[area], df[area].max())
    rest = ~df["pareto"]
    ax.scatter(df.loc[rest, x], df.loc[rest, y], s=sizes[rest], color="0.6", alpha=0.5,
               edgecolors="0.3", linewidths=0.5, label="dominated / infeasible")
    front = df[df["pareto"]].sort_values(x)
    ax.step(front[x], front[y].cummax(), where="post", color="C0", linewidth=1, alpha=0.7)
    ax.scatter(front[x], front[y], s=sizes[df["pareto"]].loc[front.index], color="C0",
               alpha=0.85, edgecolors="k", linewidths=0.6, label="Pareto-optimal")
    for _, r in front.iterrows():
        ax.annotate(f"#{r['trial']}", (r[x], r[y]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for role, marker, color in (("teacher", "*", "C3"), ("reference", "D", "C2")):
        sel = df[df["role"] == role]
        if len(sel):
            ax.scatter(sel[x], sel[y], marker=marker, s=160 if role == "teacher" else 60,
                       facecolors="none" if role == "reference" else color, edgecolors=color, linewidths=1.5,
                       label=role, zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel(f"{AXIS_LABELS.get(x, x)}, log scale")
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, markerscale=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_comparison(handles: list[StudyHandle], path: str | Path, title: str | None = None) -> Path:
    """The Pareto fronts of several studies on one figure (one colour per study, teachers as stars).

    Example (not run as a doctest: it needs stored studies)::

        plot_comparison([open_study("a"), open_study("b")], "cmp.png")
    """
    path = Path(path)
    suffix = _check_suffix(path)
    x, y, area = _common_axes(handles)
    series = [(h.name, _points(h)) for h in handles]
    title = title or "Pareto fronts: " + ", ".join(name for name, _ in series)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        return _plotly(series, path, title, fronts_only=True, axes=(x, y, area))
    plt = _pyplot()
    largest = max(df[area].max() for _, df in series)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, (name, df) in enumerate(series):
        front = df[df["pareto"]].sort_values(x)
        color = f"C{i % 10}"
        ax.step(front[x], front[y].cummax(), where="post", color=color, alpha=0.7)
        ax.scatter(front[x], front[y], s=_marker_sizes(front[area], largest),
                   color=color, alpha=0.8, edgecolors="k", linewidths=0.5, label=name)
        teacher = df[df["role"] == "teacher"]
        ax.scatter(teacher[x], teacher[y], marker="*", s=160, color=color, edgecolors="k", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel(f"{AXIS_LABELS.get(x, x)}, log scale")
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    ax.set_title(title + "  (star: teacher)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, markerscale=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_history(handles: list[StudyHandle], path: str | Path, title: str | None = None) -> Path:
    """Hypervolume (teacher-normalised) against the search's busy seconds, one step line per study:
    how fast each search improved its front (`StudyHandle.hypervolume_history`). PNG/SVG/PDF only.

    Example (not run as a doctest: it needs stored studies)::

        plot_history([open_study("a"), open_study("b")], "history.png")
    """
    path = Path(path)
    if _check_suffix(path) not in STATIC_SUFFIXES:
        raise PlotError(f"the history plot is drawn with matplotlib: write {path.stem}.png (or .svg, .pdf)")
    series = [(h.name, h.hypervolume_history()) for h in handles]
    if all(df.empty for _, df in series):
        raise PlotError("no finished trial to plot yet; run `vitshrink search` first")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, df) in enumerate(series):
        ax.step(df["seconds"], df["hypervolume"], where="post", color=f"C{i % 10}", label=name)
        pruned = df[df["state"] == "PRUNED"]
        ax.scatter(pruned["seconds"], pruned["hypervolume"], marker="x", s=18, color=f"C{i % 10}", alpha=0.6)
    ax.set_xlabel("search time (s, busy wall-clock summed across resumes)")
    ax.set_ylabel("hypervolume (teacher-normalised)")
    ax.set_title(title or "hypervolume over time (x: a screened or stopped trial)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plotly(series: list[tuple[str, pd.DataFrame]], path: Path, title: str, fronts_only: bool = False,
            axes: tuple[str, str, str] = ("latency_ms", "accuracy", "size_bytes")) -> Path:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise PlotError("an .html plot needs plotly: pip install plotly (or pip install 'vitshrink[plotly]'), "
                        "or write a .png instead") from None
    x, y, area = axes
    largest = max(df[area].max() for _, df in series)
    fig = go.Figure()
    for name, df in series:
        groups = [("Pareto", df[df["pareto"]])] if fronts_only else [("Pareto", df[df["pareto"]]),
                                                                      ("other", df[~df["pareto"]])]
        for kind, part in groups:
            part = part.sort_values(x)
            fig.add_trace(go.Scatter(
                x=part[x], y=part[y], mode="markers",
                name=f"{name} {kind}" if len(series) > 1 or kind != "Pareto" else f"{name} Pareto-optimal",
                marker={"size": (6 + 24 * part[area].astype(float) / largest).tolist(),
                        "opacity": 0.85 if kind == "Pareto" else 0.35,
                        "symbol": ["star" if r == "teacher" else "diamond" if r == "reference" else "circle"
                                   for r in part["role"]]},
                customdata=part[["trial", area, "role", "label"]].astype(str).values,
                hovertemplate=(f"trial %{{customdata[0]}} (%{{customdata[2]}})<br>{y} %{{y:.4f}}<br>{x} %{{x:.4g}}"
                               f"<br>{area} %{{customdata[1]}}<br>%{{customdata[3]}}<extra></extra>"),
            ))
    fig.update_layout(title=title, xaxis={"title": AXIS_LABELS.get(x, x), "type": "log"},
                      yaxis={"title": AXIS_LABELS.get(y, y)}, template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True)
    return path


__all__ = ["AXIS_LABELS", "PlotError", "axes_of", "plot_comparison", "plot_history", "plot_study"]

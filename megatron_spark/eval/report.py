"""The evaluation report: ``report.md`` with one table per eval section and ``curves.png`` with
the held-out accuracies over training steps, read back from a run's ``metrics.jsonl``.

Numbers whose key names a fraction (see ``FRACTION_KEY``) are shown as percentages to one
decimal; any other value is shown as it is, so new keys in ``eval.json`` need no change here.
Plots are drawn with matplotlib's Agg canvas (no display, no pyplot state). Every file is
written to a temporary name in its own folder and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from megatron_spark.data.datasets import read_jsonl
from megatron_spark.errors import UserError

CURVES: tuple[tuple[str, str], ...] = (
    ("eval/accuracy", "policy accuracy (held-out, greedy)"),
    ("eval/judge_pointwise_accuracy", "pointwise judge accuracy (held-out)"),
    ("eval/judge_pairwise_accuracy", "pairwise judge accuracy (held-out)"),
    ("eval/reflection_accuracy", "reflection accuracy (held-out)"),
)
"""(metric name in metrics.jsonl, plot label) of the per-step curves, in plotting order."""

SECTIONS: tuple[tuple[str, str], ...] = (
    ("reasoning", "Reasoning (policy)"),
    ("judge", "Judge"),
    ("reflection", "Reflection"),
    ("tts", "Test-time scaling"),
    ("reward_bench", "Reward benchmark"),
)
"""(key in eval.json, heading) of the known sections, in report order; other dict-valued keys
follow under their own name."""

RUN_FIELDS: dict[str, str] = {"num_problems": "held-out problems", "wall_time_s": "wall time (s)"}
"""Labels of known top-level scalars of eval.json; others are labelled by their key."""

FRACTION_KEY = re.compile(r"accuracy|_rate$|^pass@|^maj@|^majority_at|^own_(wrong|right)_|_by_|^sample_mean$")
"""A key (or any key above it, e.g. ``pointwise_by_source``) matching this holds fractions in
[0, 1], shown as percentages."""

JUDGE_NOTE = "Note: judge accuracy is measured on balanced held-out items."
"""Printed under the judge table: chance is 50%, whatever the policy's own accuracy."""

_NON_FINITE = {"nan", "inf", "-inf"}  # how MetricsLogger stores non-finite floats


# --- metrics.jsonl -----------------------------------------------------------------------------


def read_curves(
    metrics_jsonl: Path, metrics: Iterable[str] = tuple(name for name, _ in CURVES)
) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` sorted by step, for each of ``metrics`` that has at least
    one finite value; rows without a metric (or with NaN) add no point to it.

    A line that is not JSON, not an object, or lacks an integer ``step``, or a metric that is not
    a number, is a UserError naming ``file:line``.
    """
    path = Path(metrics_jsonl)
    if not path.is_file():
        raise UserError(f"{path}: metrics file not found")
    names = tuple(metrics)
    curves: dict[str, list[tuple[int, float]]] = {}
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            got = "nothing" if step is None else type(step).__name__
            raise UserError(f"{where}: field 'step' must be an integer, got {got}")
        for name in names:
            value = _metric_value(row.get(name), name, where)
            if value is not None:
                curves.setdefault(name, []).append((step, value))
    return {name: sorted(points, key=lambda p: p[0]) for name, points in curves.items()}


def _metric_value(value: Any, name: str, where: str) -> float | None:
    """The value as a finite float, or None when absent or non-finite."""
    if value is None or (isinstance(value, str) and value in _NON_FINITE):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{where}: field '{name}' must be a number, got {type(value).__name__}")
    return float(value) if math.isfinite(value) else None


# --- plots -------------------------------------------------------------------------------------


def plot_curves(curves: dict[str, list[tuple[int, float]]], out_png: Path, title: str) -> Path:
    """One PNG with a line per metric that has points: the ``CURVES`` first, in their order and
    with their labels, then any other metric under its own name. Raises ValueError if none has."""
    labels = dict(CURVES)
    order = [name for name in labels if name in curves] + [name for name in curves if name not in labels]
    lines = {labels.get(name, name): curves[name] for name in order if curves[name]}
    return _plot(lines, out_png, title, ylabel="accuracy")


def plot_comparison(
    runs: dict[str, dict[str, list[tuple[int, float]]]], metric: str, out_png: Path, title: str
) -> Path:
    """One PNG with a line per run (``{run name: curves}``, as ``read_curves`` returns) for one
    metric; runs without it are left out. Raises ValueError if no run has it."""
    lines = {run: curves[metric] for run, curves in runs.items() if curves.get(metric)}
    return _plot(lines, Path(out_png), title, ylabel=dict(CURVES).get(metric, metric))


def _plot(lines: dict[str, list[tuple[int, float]]], out_png: Path, title: str, ylabel: str) -> Path:
    if not lines:
        raise ValueError(f"nothing to plot for {out_png}: no curve has a point")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 4.6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points in lines.items():
        steps, values = zip(*points)
        # markers keep a curve of one point (step 0 only) visible
        ax.plot(steps, values, marker="o", markersize=3, linewidth=1.5, label=label)
    every = [v for points in lines.values() for _, v in points]
    if min(every) >= 0.0 and max(every) <= 1.0:
        # accuracies: the same axis on every plot; the margin keeps points at 0 and 1 whole
        ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    # below the axes, so that no curve is hidden behind it
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    return out_png


# --- report.md ---------------------------------------------------------------------------------


def write_report(
    out_dir: Path, eval_result: dict, metrics_jsonl: Path | None, title: str = "SPARK evaluation"
) -> Path:
    """Write ``out_dir/report.md`` (and ``out_dir/curves.png`` when ``metrics_jsonl`` has any
    curve point) and return the report's path. Sections missing from ``eval_result`` are left
    out."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plotted = False
    if metrics_jsonl is not None:
        curves = read_curves(metrics_jsonl)
        if curves:
            plot_curves(curves, out_dir / "curves.png", title)
            plotted = True
    text = render_report(eval_result, title, curves_png="curves.png" if plotted else None)
    if metrics_jsonl is not None and not plotted:
        text += f"No held-out curve points in `{metrics_jsonl}`; no curves plotted.\n"
    report = out_dir / "report.md"
    write_atomically(report, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return report


def render_report(eval_result: dict, title: str, curves_png: str | None) -> str:
    """The markdown text of the report; ``curves_png`` is the plot's path relative to it."""
    out = [f"# {title}", ""]
    if "checkpoint" in eval_result:
        out += [f"Checkpoint: `{eval_result['checkpoint']}`", ""]
    scalars = [(k, v) for k, v in eval_result.items() if k != "checkpoint" and not isinstance(v, dict)]
    out += [f"- {RUN_FIELDS.get(k, _label(k))}: {_cell(v, fraction=False)}" for k, v in scalars]
    if scalars:
        out.append("")
    headings = dict(SECTIONS)
    names = [k for k in headings if k in eval_result]
    names += [k for k, v in eval_result.items() if isinstance(v, dict) and k not in headings]
    for name in names:
        out += [f"## {headings.get(name, name)}", "", "| metric | value |", "|---|---:|"]
        out += [f"| {label} | {value} |" for label, value in _rows(eval_result[name])]
        out.append("")
        if name == "judge":
            out += [JUDGE_NOTE, ""]
    if curves_png is not None:
        out += ["## Held-out accuracy during training", "", f"![curves]({curves_png})", ""]
    return "\n".join(out)


def _rows(section: Any, path: tuple[str, ...] = (), fraction: bool = False) -> Iterator[tuple[str, str]]:
    """(label, formatted value) per leaf of a nested section; nested keys join with " / "."""
    if not isinstance(section, dict):  # a section that is a bare value
        yield _label(path[-1]) if path else "value", _cell(section, fraction)
        return
    for key, value in section.items():
        key = str(key)
        inner = fraction or bool(FRACTION_KEY.search(key))
        if isinstance(value, dict):
            yield from _rows(value, (*path, key), inner)
        else:
            yield " / ".join(_label(k) for k in (*path, key)), _cell(value, inner)


def _label(key: str) -> str:
    return _escape(key.replace("_", " "))


def _cell(value: Any, fraction: bool) -> str:
    """A value as table text: fractions as ``41.0%``, other floats to 4 significant digits."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _escape(str(value))
    if not math.isfinite(value):
        return "n/a"
    if fraction:
        return f"{100 * value:.1f}%"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file next to ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

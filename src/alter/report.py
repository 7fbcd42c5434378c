"""A Markdown report that compares evaluation runs side by side, with PNG bar charts.

Input: one or more directories written by ``alter eval`` (each holds ``<BENCH>_SUMMARY.json``,
and usually ``eval_config.json`` and ``ENTROPY_STABILITY.json``). Output: ``FILE.md`` with

* a table of the runs (model, adapter, benchmark, limit, time);
* per benchmark, a table with one row per metric and one column per run; a value that could
  not be computed shows ``n/a`` with its reason listed under the table;
* per benchmark, one PNG (``<FILE>_figures/<BENCH>.png``) with a bar chart per metric;
* the entropy-stability numbers and links to the runs' histograms, when present.

The Markdown file and its figure folder are written under temporary names and renamed into
place, so a failed report leaves nothing behind. Plots need matplotlib (a dependency); they are
drawn on a bare ``Figure`` (Agg), never through pyplot, so no display is needed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alter.errors import AlterError
from alter.evals.results import read_summaries

ENTROPY_FILE = "ENTROPY_STABILITY.json"
CONFIG_FILE = "eval_config.json"


class ReportError(AlterError, ValueError):
    """The report cannot be built as asked; the message says why."""


@dataclass
class Run:
    """One evaluation directory: its label, summaries by benchmark, config and entropy report."""

    path: Path
    label: str
    summaries: dict[str, dict]
    config: dict
    entropy: dict | None


def _optional_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _labels(paths: Sequence[Path]) -> list[str]:
    """Directory names, lengthened with parents (then numbered) until they are unique."""
    labels = [p.name or str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.name}" for p in paths]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label}#{seen[label]}")
    return out


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """Read every run directory (raises :class:`ReportError` for a missing or empty one)."""
    if not run_dirs:
        raise ReportError("give at least one run directory")
    paths = [Path(d).expanduser() for d in run_dirs]
    runs = []
    for path, label in zip(paths, _labels(paths), strict=True):
        try:
            summaries = read_summaries(path)
        except AlterError as e:
            raise ReportError(str(e)) from None
        entropy = _optional_json(path / ENTROPY_FILE) or None
        runs.append(Run(path, label, summaries, _optional_json(path / CONFIG_FILE), entropy))
    return runs


# --------------------------------------------------------------------------------- formatting


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def fmt(value) -> str:
    """A summary value for a table cell: 4 decimals, scientific for tiny or huge numbers."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _metrics(runs: Sequence[Run], bench: str) -> list[str]:
    """Metric names of one benchmark, in first-seen order, without the ``*_reason`` notes."""
    names: dict[str, None] = {}
    for run in runs:
        for key in run.summaries.get(bench, {}):
            if not key.endswith("_reason"):
                names.setdefault(key, None)
    return list(names)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _bench_section(runs: Sequence[Run], bench: str, figure: str | None) -> list[str]:
    metrics = _metrics(runs, bench)
    present = [r for r in runs if bench in r.summaries]
    rows, notes = [], []
    for m in metrics:
        cells = [f"`{m}`"]
        for run in present:
            s = run.summaries[bench]
            value = s.get(m)
            cells.append(fmt(value) if m in s else "")
            if m in s and value is None and s.get(f"{m}_reason"):
                notes.append(f"- {run.label}, `{m}`: {s[f'{m}_reason']}")
        rows.append(cells)
    lines = [f"## {bench}", ""]
    lines += _table(["metric", *(r.label for r in present)], rows)
    if notes:
        lines += ["", "n/a:", *notes]
    if figure:
        lines += ["", f"![{bench}]({figure})"]
    return lines + [""]


def _runs_section(runs: Sequence[Run]) -> list[str]:
    rows = []
    for run in runs:
        c = run.config
        secs = c.get("eval_seconds")
        rows.append(
            [
                run.label,
                fmt(c.get("model", "?")),
                fmt(c.get("adapter") or "none"),
                ", ".join(run.summaries),
                fmt(c.get("limit") if c.get("limit") is not None else "all"),
                "?" if secs is None else f"{secs:.0f} s",
                f"`{run.path}`",
            ]
        )
    header = ["run", "model", "adapter", "benchmarks", "limit", "eval time", "directory"]
    return ["## Runs", "", *_table(header, rows), ""]


def _entropy_section(runs: Sequence[Run], out_dir: Path) -> list[str]:
    with_entropy = [r for r in runs if r.entropy]
    if not with_entropy:
        return []
    rows, images = [], []
    for run in with_entropy:
        e = run.entropy
        stab = e.get("splits", {}).get("all", {}).get("stability", {})
        rows.append(
            [
                run.label,
                fmt(e.get("q")),
                fmt(e.get("threshold")),
                fmt(stab.get("high_stay")),
                fmt(stab.get("low_stay")),
                fmt(stab.get("agreement")),
                fmt(stab.get("n_tokens")),
            ]
        )
        for name in e.get("figures", []):
            rel = os.path.relpath(run.path / name, out_dir)
            images.append(f"![{run.label} {name}]({Path(rel).as_posix()})")
    header = ["run", "q", "threshold", "high stay", "low stay", "agreement", "tokens"]
    lines = ["## Entropy split stability (original -> evaluated model)", ""]
    lines += _table(header, rows)
    lines += [
        "",
        "high stay / low stay: share of answer tokens above / at or below the threshold under "
        "the original model that stay on that side under the evaluated model.",
    ]
    return lines + ["", *images, ""] if images else lines + [""]


# ------------------------------------------------------------------------------------ plots


def plot_bench(runs: Sequence[Run], bench: str, path: Path) -> Path | None:
    """One PNG: a bar chart per numeric metric of ``bench``, one bar per run (``None``: no data)."""
    from matplotlib.figure import Figure

    present = [r for r in runs if bench in r.summaries]
    metrics = [
        m
        for m in _metrics(present, bench)
        if any(_is_number(r.summaries[bench].get(m)) for r in present)
    ]
    if not metrics:
        return None
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
    colours = [f"C{i % 10}" for i in range(len(present))]
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = [r.summaries[bench].get(m) for r in present]
        heights = [v if _is_number(v) else 0.0 for v in values]
        bars = ax.bar(range(len(present)), heights, color=colours)
        for bar, v in zip(bars, values, strict=True):
            if not _is_number(v):
                ax.text(bar.get_x() + bar.get_width() / 2, 0, "n/a", ha="center", fontsize=7)
        ax.set_title(m, fontsize=8)
        ax.set_xticks(range(len(present)), [r.label for r in present], fontsize=7, rotation=20)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(bench)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# ------------------------------------------------------------------------------------ build


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    plots: bool = True,
    overwrite: bool = False,
    title: str = "Unlearning evaluation report",
) -> Path:
    """Write the Markdown report ``out`` (and ``<out stem>_figures/``); return its path."""
    out = Path(out).expanduser()
    if out.suffix.lower() != ".md":
        raise ReportError(f"{out}: the report is Markdown, give a path ending in .md")
    if out.is_dir():
        raise ReportError(f"{out}: is a directory")
    if out.exists() and not overwrite:
        raise ReportError(f"{out}: already exists; pass --overwrite to replace it")
    runs = load_runs(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = out.with_name(f"{out.stem}_figures")
    benches = list(dict.fromkeys(b for r in runs for b in r.summaries))

    tmp_figs = Path(tempfile.mkdtemp(prefix=f".{fig_dir.name}.partial-", dir=out.parent))
    tmp_md = out.with_name(f".{out.name}.partial")
    try:
        lines = [f"# {title}", ""]
        lines += _runs_section(runs)
        plot_note = None
        for bench in benches:
            figure = None
            if plots:
                try:
                    png = plot_bench(runs, bench, tmp_figs / f"{bench}.png")
                except ImportError:
                    png, plot_note = None, "matplotlib is not installed: no plots."
                if png is not None:
                    figure = f"{fig_dir.name}/{png.name}"
            lines += _bench_section(runs, bench, figure)
        lines += _entropy_section(runs, out.parent)
        if plot_note:
            lines += [plot_note, ""]
        tmp_md.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
        if any(tmp_figs.iterdir()):
            tmp_figs.chmod(0o755)
            if fig_dir.exists():
                shutil.rmtree(fig_dir)
            os.replace(tmp_figs, fig_dir)
        os.replace(tmp_md, out)
    finally:
        if tmp_figs.exists():
            shutil.rmtree(tmp_figs, ignore_errors=True)
        if tmp_md.exists():
            tmp_md.unlink()
    return out

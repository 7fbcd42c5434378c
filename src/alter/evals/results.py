"""Evaluation results on disk, in open-unlearning's layout: ``<BENCH>_EVAL.json`` + ``<BENCH>_SUMMARY.json``.

* ``<BENCH>_EVAL.json`` maps each metric to ``{"agg_value": x, "value_by_index": {"0": ..., "1":
  ...}}`` (per-item values; their shape depends on the metric) plus metric-specific extras, and
  may hold ``"meta"`` (model, adapter, data, options).
* ``<BENCH>_SUMMARY.json`` maps each metric to its aggregate (a number). A headline number that
  could not be computed is ``null`` and comes with ``"<metric>_reason"``, a sentence saying why
  (e.g. no retain reference was given), so a reader never sees a bare ``None``.

``BENCH`` is the upper-cased benchmark name (``TOFU``, ``MUSE``, ``MCQ``, ``SYNTHETIC``); TOFU's
two objects come from :meth:`alter.evals.tofu.TofuEval.to_eval_json` / ``to_summary_json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from alter.errors import AlterError
from alter.runs import write_json

EVAL_SUFFIX = "_EVAL.json"
SUMMARY_SUFFIX = "_SUMMARY.json"


class ResultsError(AlterError, ValueError):
    """A results directory or file is missing or not in the expected layout."""


def bench_tag(benchmark: str) -> str:
    """``"tofu"`` -> ``"TOFU"``: the file-name prefix of a benchmark's results."""
    if not benchmark or not benchmark.replace("_", "").isalnum():
        raise ValueError(f"benchmark name must be alphanumeric, got {benchmark!r}")
    return benchmark.upper()


def entry(agg_value, values: Sequence | None = None, **extra) -> dict:
    """One EVAL metric: ``{"agg_value", "value_by_index"?, **extra}``; ``values[i]`` is index ``i``."""
    out: dict = {"agg_value": agg_value}
    if values is not None:
        out["value_by_index"] = {str(i): v for i, v in enumerate(values)}
    out.update(extra)
    return out


def write_results(
    out_dir: str | Path, benchmark: str, eval_json: Mapping, summary_json: Mapping
) -> tuple[Path, Path]:
    """Write ``<BENCH>_EVAL.json`` and ``<BENCH>_SUMMARY.json`` into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = bench_tag(benchmark)
    paths = (out / f"{tag}{EVAL_SUFFIX}", out / f"{tag}{SUMMARY_SUFFIX}")
    write_json(paths[0], dict(eval_json))
    write_json(paths[1], dict(summary_json))
    return paths


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object of metric: value")
    return data


def read_summaries(run_dir: str | Path) -> dict[str, dict]:
    """Every ``<BENCH>_SUMMARY.json`` of a run directory: ``{"TOFU": {...}, ...}``, sorted."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ResultsError(f"{path}: no such results directory")
    files = sorted(path.glob(f"*{SUMMARY_SUFFIX}"))
    if not files:
        raise ResultsError(f"{path}: no *{SUMMARY_SUFFIX} file (is this an `alter eval` output?)")
    return {f.name[: -len(SUMMARY_SUFFIX)]: _read(f) for f in files}


def read_eval(run_dir: str | Path, benchmark: str) -> dict:
    """The ``<BENCH>_EVAL.json`` of a run directory."""
    path = Path(run_dir).expanduser() / f"{bench_tag(benchmark)}{EVAL_SUFFIX}"
    if not path.is_file():
        raise ResultsError(f"{path}: no such file")
    return _read(path)

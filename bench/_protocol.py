"""Plumbing shared by the bench/ protocol scripts (``muse_news_mini.py``, ``sequential.py``).

A protocol is one resumable command: every stage (a fine-tuned model, an unlearning run, an
evaluation) is a directory written atomically by :mod:`alter.runs` and skipped when complete; an
interrupted fine-tuning or unlearning run continues from its last checkpoint. Wall-clock seconds
of the stages that ran are kept in ``OUT/timings.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path


class Timings:
    """Seconds per stage, in ``OUT/timings.json`` (rewritten atomically after every stage)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.values: dict[str, float] = (
            json.loads(self.path.read_text()) if self.path.is_file() else {}
        )

    @contextlib.contextmanager
    def stage(self, key: str):
        t0 = time.perf_counter()
        yield
        self.values[key] = time.perf_counter() - t0
        write_json(self.path, self.values)

    def get(self, key: str) -> float | None:
        return self.values.get(key)


def check_protocol(out: Path, options: dict) -> None:
    """OUT's cached stages hold only for the options they were made with: the first run writes
    ``OUT/protocol.json``, a later run with other values stops with an error. ``data`` is
    compared as an absolute path (``../shared/data`` from one directory is ``/x/shared/data``)."""
    if isinstance(options.get("data"), str):
        options = {**options, "data": str(Path(options["data"]).resolve())}
    path = Path(out) / "protocol.json"
    if not path.is_file():
        write_json(path, options)
        return
    have = json.loads(path.read_text())
    diff = sorted(k for k in options if have.get(k) != options[k])
    if diff:
        was = ", ".join(f"{k}={have.get(k)!r}" for k in diff)
        raise SystemExit(
            f"error: {out} holds a run made with other options ({was}); use another --out"
        )


def write_json(path: str | Path, obj) -> None:
    from alter.runs import write_json as _write

    _write(path, obj)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def add_variant_args(ap) -> None:
    """``--set KEY=VALUE`` (repeatable) and ``--variant NAME`` on a protocol's parser."""
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option for every listed method (as `alter unlearn --set`); needs --variant",
    )
    ap.add_argument(
        "--variant",
        default=None,
        help="name of the --set variant: its runs and rows are METHOD+VARIANT, next to the defaults",
    )


def variant_overrides(ap, args) -> dict:
    """The ``--set`` options as `alter unlearn` reads them; usage errors through ``ap``."""
    import re

    from alter.api import parse_set
    from alter.errors import ConfigError

    try:
        overrides = parse_set(args.set)
    except ConfigError as e:
        ap.error(str(e))
    if bool(overrides) != bool(args.variant):
        ap.error("--set and --variant go together (the variant names the runs of the options)")
    if args.variant and not re.fullmatch(r"[A-Za-z0-9_.=-]+", args.variant):
        ap.error(f"--variant {args.variant!r}: use letters, digits and _ . = - only")
    return overrides


def check_variant(out: Path, name: str, overrides: dict) -> None:
    """A variant name always means the same options (OUT/variants.json): its finished runs are
    reused, so another --set under the same name is refused."""
    from alter.api import parse_set_value

    path = out / "variants.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    # older files hold YAML's reading of e.g. 5e-3 (a string); compare as --set reads it now
    same = {
        k: parse_set_value(v) if isinstance(v, str) else v for k, v in known.get(name, {}).items()
    }
    if name in known and same != overrides:
        raise SystemExit(
            f"error: variant {name!r} was run with {known[name]} in {out}, not {overrides}; "
            "use another --variant"
        )
    if name not in known:
        write_json(path, {**known, name: overrides})


def _resumable(out: Path) -> bool:
    from alter.runs import RESUME_DIR, partial_dir

    return (partial_dir(out) / RESUME_DIR).is_dir()


def finetune_stage(model: str, rows, cfg, out: Path, timings: Timings, key: str) -> Path:
    """Fine-tune ``model`` on ``rows`` into ``out`` unless it is complete there (cached)."""
    from alter.pipeline import finetune_and_save
    from alter.runs import is_complete

    if not is_complete(out):
        print(f"{key}: fine-tuning {model} on {len(rows)} rows -> {out}", flush=True)
        resume = _resumable(out)
        with timings.stage(key):
            finetune_and_save(
                model, rows, cfg, out, overwrite=not resume, resume=resume, evaluate=False
            )
    return out


def unlearn_stage(
    model: str, forget, retain, out: Path, method: str, overrides: dict, timings: Timings, key: str
) -> Path:
    """Unlearn ``forget`` from ``model`` with ``method`` into ``out`` unless it is complete there."""
    from alter.pipeline import unlearn_and_save
    from alter.runs import is_complete

    if not is_complete(out):
        print(f"{key}: {method} unlearning {len(forget)} forget rows -> {out}", flush=True)
        resume = _resumable(out)
        with timings.stage(key):
            unlearn_and_save(
                model,
                forget,
                retain,
                out=out,
                method=method,
                overrides=overrides,
                overwrite=not resume,
                resume=resume,
            )
    return out


def is_full_model(run: Path) -> bool:
    """Whether an unlearning run holds a whole model (GA, GD, NPO, ...) rather than an adapter."""
    meta = Path(run) / "alter_method.json"
    return meta.is_file() and json.loads(meta.read_text()).get("kind") == "full"


def model_spec(run: Path, base: str) -> tuple[str, str | None]:
    """``(model, adapter)`` that load an unlearning run made from ``base``."""
    return (str(run), None) if is_full_model(run) else (base, str(run))


def eval_stage(
    out: Path,
    spec: tuple[str, str | None],
    benchmark: str,
    data: str | Path,
    reference,
    options,
    timings: Timings,
    key: str,
) -> dict:
    """Evaluate ``spec`` = ``(model, adapter)`` into ``out`` unless complete; return the SUMMARY."""
    from alter.evals.results import bench_tag
    from alter.evals.runner import run_eval
    from alter.runs import is_complete

    if not is_complete(out):
        print(f"{key}: evaluating on {benchmark} -> {out}", flush=True)
        with timings.stage(key):
            run_eval(
                spec[0], spec[1], benchmark, data, out, reference, options=options, overwrite=True
            )
    return json.loads((out / f"{bench_tag(benchmark)}_SUMMARY.json").read_text())


def fmt(value, spec: str = ".3f") -> str:
    """A table cell: ``n/a`` for a missing or non-finite value."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return format(value, spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# TOFU's ``full`` split: 200 fictitious authors, 20 QA rows each, in author order; forgetXX is
# the last XX% of the authors (forget01 = authors 198 and 199).
TOFU_ROWS_PER_AUTHOR = 20
TOFU_AUTHORS = 200
FORGET01_AUTHORS = (198, 199)


def tofu_author_rows(
    full: list, authors, rows_per_author: int = TOFU_ROWS_PER_AUTHOR, *, subdomain: bool = True
) -> list[dict]:
    """The first ``rows_per_author`` rows of each of ``authors`` (indices into TOFU's 200) from
    ``full``; with ``subdomain`` every row names its author (``author{a}``), so ALTER trains one
    forget expert per author (the other methods ignore the field)."""
    return [
        {**full[a * TOFU_ROWS_PER_AUTHOR + j], **({"subdomain": f"author{a}"} if subdomain else {})}
        for a in authors
        for j in range(rows_per_author)
    ]


def tofu_retain(tofu_dir: Path, retain_items: int, source: str):
    """TOFU's ``full`` rows and the retain rows: exactly the first ``retain_items`` items of
    ``retain_perturbed`` (so retain utility is measured on facts the target was taught)."""
    from alter.data.benchmarks import load_tofu
    from alter.data.schema import RowSet

    full = list(load_tofu("full", tofu_dir))
    index = {r["question"]: i for i, r in enumerate(full)}
    covered = [
        index[r["question"]] for r in list(load_tofu("retain_perturbed", tofu_dir))[:retain_items]
    ]
    return full, covered, RowSet([full[i] for i in covered], source=source, kind="qa")

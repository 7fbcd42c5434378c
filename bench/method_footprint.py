"""Every method's training speed and peak memory on tofu-mini's data, a fresh process per method.

    python bench/method_footprint.py --tofu-mini runs/tofu-mini [--data ../shared/data] \\
        [--methods alter,npo,...] [--steps 8] [--out runs/footprint]

Unlearns tofu-mini's forget01 rows (its retain set: the first 160 ``retain_perturbed`` items)
from the tofu-mini target with each method's defaults for ``--steps`` steps of 4 forget + 4
retain rows (ALTER: ``--steps`` Stage I steps, then ``--steps`` Stage II steps), each method in a
fresh Python process so that one method's peak does not carry into the next one's, and reads the
run summary back:

* training tokens/s (the forget + retain tokens of every step over the training loop's time;
  ALTER: Stage I + II, without its pre-pass and initialisation);
* peak RSS sampled during the run (``alter.memory.PeakRSS``: from loading the method's extra
  state, such as NPO's reference or ALTER's pre-pass, to saving) and the process's peak (the
  model's loading included).

Memory and speed per step do not depend on the number of steps (after the first), so these are
the figures of the full tofu-mini runs; the bench takes ~1 min per method on 2 CPU cores.
Writes OUT/footprint.json and OUT/table.md; resumable (a finished method is not rerun).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402

RETAIN_ITEMS = 160  # bench/tofu_mini.py's default --retain-items


def one(args) -> None:
    """The child process: one method's short run into OUT/runs/METHOD."""
    from alter.data.schema import RowSet
    from alter.pipeline import unlearn_and_save

    full, _, retain = P.tofu_retain(Path(args.data) / "tofu", RETAIN_ITEMS, "footprint:retain")
    forget = RowSet(
        P.tofu_author_rows(full, P.FORGET01_AUTHORS), source="footprint:forget01", kind="qa"
    )
    overrides = {"max_steps": args.steps, "seed": 0}
    if args.one == "alter":
        overrides["stage1_max_steps"] = args.steps
    unlearn_and_save(
        str(Path(args.tofu_mini) / "target"),
        forget,
        retain,
        out=Path(args.out) / "runs" / args.one,
        method=args.one,
        overrides=overrides,
        overwrite=True,
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tofu-mini", required=True, help="a bench/tofu_mini.py directory")
    ap.add_argument("--data", default="../shared/data", help="data root holding tofu/")
    ap.add_argument("--methods", default="alter,npo,gd,ga,simnpo,rmu,lora,asymlora")
    ap.add_argument("--steps", type=int, default=8, help="training steps per method (>= 2)")
    ap.add_argument("--out", default="runs/footprint")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process's method
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step includes warm-up)")
    from alter.runs import is_complete

    if not is_complete(Path(args.tofu_mini) / "target"):
        ap.error(f"no finished target under {args.tofu_mini} (run bench/tofu_mini.py first)")
    if args.one:
        one(args)
        return {}

    from alter.methods import check_method

    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        check_method(m)
    out = Path(args.out)
    rows = {}
    for m in methods:
        run = out / "runs" / m
        if not is_complete(run):
            print(f"footprint: {m}, {args.steps} steps -> {run}", flush=True)
            child = [sys.executable, __file__, *(argv or sys.argv[1:]), f"--one={m}"]
            if subprocess.run(child).returncode != 0:
                raise SystemExit(f"error: the {m} run failed (its output is above)")
        s = json.loads((run / "summary.json").read_text())
        rows[m] = {
            "tokens_per_second": s["tokens_per_second"],
            "peak_rss_mb": s["peak_rss_mb"],
            "process_peak_rss_mb": s["process_peak_rss_mb"],
            "seconds": s["seconds"],
        }
    result = {"steps": args.steps, "tofu_mini": str(args.tofu_mini), "methods": rows}
    P.write_json(out / "footprint.json", result)
    table = P.markdown_table(
        ["method", "train tokens/s", "peak RSS during the run (GB)", "process peak RSS (GB)"],
        [
            [
                m,
                P.fmt(r["tokens_per_second"], ".0f"),
                P.fmt(r["peak_rss_mb"] / 1024, ".2f"),
                P.fmt(r["process_peak_rss_mb"] / 1024, ".2f"),
            ]
            for m, r in rows.items()
        ],
    )
    P.write_text(out / "table.md", table)
    print(table)
    return result


if __name__ == "__main__":
    main()

"""Attacks on every method's unlearned model from bench/methods_synthetic.py (built-in benchmark).

    python bench/attacks_synthetic.py [--runs runs/bench-methods] [--methods alter,ga,...]

For each finished run under RUNS/runs/<method> (and the target itself, as the no-unlearning
reference): relearning (6 full-parameter steps, lr 2e-5, on the even-index forget rows; measured
on the odd-index rows), paraphrased questions, a jailbreak-style prefix, int8 and int4 weight
rounding. Writes RUNS/attacks/<method>.json (resumable: done methods are skipped) and prints a
Markdown table of forget answer probability / fact recall per attack.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# (column, attack, summary key): relearning is measured on the held-out half, so the unattacked
# model's held-out half is its reference column.
COLUMNS = (
    ("none", "none", "forget"),
    ("none, held-out half", "none", "heldout_half"),
    ("relearn, held-out half", "relearn", "forget"),
    ("paraphrase", "paraphrase", "forget"),
    ("prefix", "prefix", "forget"),
    ("int8", "int8", "forget"),
    ("int4", "int4", "forget"),
)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", default="runs/bench-methods")
    ap.add_argument("--methods", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from alter.api import load
    from alter.attacks import recovery, run_attacks
    from alter.data.synthetic import SyntheticConfig, make_synthetic

    root = Path(args.runs)
    resolved = json.loads((root / "runs" / "alter" / "resolved_config.json").read_text())
    target = resolved["model"]
    bench = make_synthetic(SyntheticConfig(seed=args.seed))
    names = (
        args.methods.split(",")
        if args.methods
        else ["target"]
        + sorted(p.name for p in (root / "runs").iterdir() if (p / "run_complete.json").is_file())
    )
    (root / "attacks").mkdir(exist_ok=True)
    for name in names:
        path = root / "attacks" / f"{name}.json"
        if path.is_file():
            continue
        run = root / "runs" / name
        if name == "target":
            spec = (target, None)
        elif (run / "alter_method.json").is_file() and json.loads(
            (run / "alter_method.json").read_text()
        ).get("kind") == "full":
            spec = (str(run), None)
        else:
            spec = (target, str(run))
        print(f"{name}: attacking ...", flush=True)
        t0 = time.perf_counter()
        results = run_attacks(lambda s=spec: load(*s), bench.forget, bench.retain, seed=args.seed)
        rec = {
            "method": name,
            "results": results,
            "forget_prob_change": recovery(results),
            "seconds": time.perf_counter() - t0,
        }
        path.write_text(json.dumps(rec, indent=2))

    head = "| method | " + " | ".join(c for c, _, _ in COLUMNS) + " | retain prob after int4 |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name in names:
        path = root / "attacks" / f"{name}.json"
        if not path.is_file():
            continue
        res = json.loads(path.read_text())["results"]
        cells = []
        for _, a, key in COLUMNS:
            f = res[a][key]
            cells.append(f"{f['prob']:.3f} / {f.get('fact_recall', float('nan')):.2f}")
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {res['int4']['retain']['prob']:.3f} |"
        )
    table = "\n".join(lines)
    (root / "attacks" / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

"""Every method on the built-in benchmark with the same budget: unlearn, evaluate, tabulate.

    python bench/methods_synthetic.py [--model smollm2-135m] [--methods alter,ga,...] \
        [--epochs 10] [--out runs/bench-methods] [--set METHOD.key=value ...]

The target is the demo's (the model fine-tuned on forget + retain, cached under
$ALTER_HOME/targets/). Each method runs in its own subprocess (so its peak RSS is its own), with
the same epochs over the forget set (batches of 4 forget + 4 retain rows) and its default learning
rate; then forget / retain / holdout are evaluated (answer probability, ROUGE-L recall of greedy
answers, fact recall). Resumable: a method whose result file exists is not run again. Writes
results/<method>.json, results.json and a Markdown table (table.md) under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

SPLITS = ("forget", "retain", "holdout")
COLS = ("prob", "rougeL_recall", "fact_recall")


def setup(model: str, seed: int):
    from alter.data.synthetic import SyntheticConfig, make_synthetic
    from alter.pipeline import synthetic_target
    from alter.train import FinetuneConfig

    synth_cfg = SyntheticConfig(seed=seed)
    bench = make_synthetic(synth_cfg)
    target = synthetic_target(
        model, bench, synth_cfg, FinetuneConfig(epochs=5.0, lr=5e-5, seed=seed)
    )
    return bench, target


def evaluate(model, tok, bench) -> dict:
    from alter.evals.qa import qa_metrics, summarise

    return {
        split: summarise(qa_metrics(model, tok, getattr(bench, split), max_new_tokens=32))
        for split in SPLITS
    }


def run_one(args, method: str, result_path: Path) -> None:
    """In the subprocess: unlearn with ``method``, evaluate, write ``result_path``."""
    from alter.memory import process_peak_mb
    from alter.pipeline import unlearn_and_save

    bench, target = setup(args.model, args.seed)
    overrides = {"epochs": args.epochs, "seed": args.seed}
    for item in args.set:
        key, _, raw = item.partition("=")
        m, _, opt = key.partition(".")
        if m == method:
            overrides[opt] = yaml.safe_load(raw)
    t0 = time.perf_counter()
    model, tok = unlearn_and_save(
        str(target),
        bench.forget,
        bench.retain,
        out=Path(args.out) / "runs" / method,
        method=method,
        overrides=overrides,
        overwrite=True,
    )
    wall = time.perf_counter() - t0
    summary = json.loads((Path(args.out) / "runs" / method / "summary.json").read_text())
    res = {
        "method": method,
        "overrides": overrides,
        "unlearn_seconds": wall,
        "peak_rss_mb": process_peak_mb(),
        "train_summary": {k: v for k, v in summary.items() if not isinstance(v, dict | list)},
        "eval": evaluate(model, tok, bench),
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(result_path)


def table(results: dict) -> str:
    head = "| method | " + " | ".join(f"{s} {c}" for s in SPLITS[:2] for c in COLS[:2])
    head += " | holdout prob | unlearn s | peak RSS MB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        e = r["eval"]
        vals = [f"{e[s][c]:.3f}" for s in SPLITS[:2] for c in COLS[:2]]
        wall = f"{r['unlearn_seconds']:.0f}" if "unlearn_seconds" in r else "-"
        rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
        lines.append(
            f"| {name} | " + " | ".join(vals) + f" | {e['holdout']['prob']:.3f} | {wall} | {rss} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=None, help="comma-separated (default: all)")
    ap.add_argument("--epochs", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-methods")
    ap.add_argument("--set", action="append", default=[], help="METHOD.key=value")
    ap.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one method in this process
    args = ap.parse_args()
    out = Path(args.out)
    if args.only:
        run_one(args, args.only, out / "results" / f"{args.only}.json")
        return

    from alter.methods import METHODS
    from alter.models import load_model

    methods = args.methods.split(",") if args.methods else list(METHODS)
    bench, target = setup(args.model, args.seed)
    target_path = out / "results" / "target.json"
    if not target_path.is_file():
        model, tok = load_model(str(target))
        target_path.parent.mkdir(parents=True, exist_ok=True)
        target_path.write_text(
            json.dumps({"method": "target", "eval": evaluate(model, tok, bench)}, indent=2)
        )
    for m in methods:
        path = out / "results" / f"{m}.json"
        if path.is_file():
            print(f"{m}: done earlier ({path})", flush=True)
            continue
        print(f"{m}: running ...", flush=True)
        cmd = [
            sys.executable,
            __file__,
            "--only",
            m,
            "--model",
            args.model,
            "--epochs",
            str(args.epochs),
            "--seed",
            str(args.seed),
            "--out",
            args.out,
            *(x for s in args.set for x in ("--set", s)),
        ]
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"{m}: failed with exit code {rc}", flush=True)
    results = {}
    for name in ("target", *methods):
        p = out / "results" / f"{name}.json"
        if p.is_file():
            results[name] = json.loads(p.read_text())
    (out / "results.json").write_text(json.dumps(results, indent=2))
    md = table(results)
    (out / "table.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()

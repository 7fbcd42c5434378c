"""RMU's steering scale and learning rate on the demo target (answer prob, no generation).

ALTER_HOME=... python bench/rmu_sweep.py --target $ALTER_HOME/targets/smollm2-135m-ef8bab4024b6
"""

from __future__ import annotations

import argparse
import time

from alter.api import resolve_baseline_configs
from alter.data.synthetic import make_synthetic
from alter.evals.qa import qa_metrics, summarise
from alter.methods.loop import run_method
from alter.methods.rmu import RMU
from alter.models import load_model

GRID = ((20.0, 5e-5), (2.0, 5e-5), (5.0, 5e-5), (2.0, 2e-4), (2.0, 1e-3), (5.0, 1e-3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", required=True)
    ap.add_argument("--epochs", type=float, default=10.0)
    args = ap.parse_args()
    bench = make_synthetic()
    for scale, lr in GRID:
        model, tok = load_model(args.target)
        shared, own = resolve_baseline_configs(
            "rmu",
            {"epochs": args.epochs, "lr": lr, "steering_scale": scale, "checkpoint_every": None},
        )
        method = RMU(own)
        t0 = time.perf_counter()
        run_method(method, model, tok, bench.forget, bench.retain, shared, progress=False)
        probs = {
            split: summarise(
                qa_metrics(method.result(), tok, getattr(bench, split), generate=False)
            )["prob"]
            for split in ("forget", "retain", "holdout")
        }
        print(
            f"scale {scale:g} lr {lr:g}: c {method.coeff:.0f}  forget {probs['forget']:.3f}  "
            f"retain {probs['retain']:.3f}  holdout {probs['holdout']:.3f}  "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Forget-vs-utility scatter of every method from a benchmark's results (docs/RESULTS.md figures).

    python bench/plot_tradeoff.py --synthetic runs/bench-methods/results.json --out fig.png
    python bench/plot_tradeoff.py --tofu runs/tofu-mini --out fig.png

``--synthetic``: bench/methods_synthetic.py's results.json; x = retain answer probability (utility
kept), y = forget answer probability (lower is more forgotten), with the target and the holdout
level (facts the target never saw) as reference lines. ``--tofu``: bench/tofu_mini.py's output
directory; x = model utility, y = forget quality (log scale, higher is closer to the retain
model), one point per evaluated model (retain model and target included).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def synthetic_points(path: Path) -> tuple[dict[str, tuple[float, float]], dict]:
    res = json.loads(path.read_text())
    points = {
        name: (r["eval"]["retain"]["prob"], r["eval"]["forget"]["prob"])
        for name, r in res.items()
        if "eval" in r
    }
    target = res["target"]["eval"]
    refs = {"holdout level": target["holdout"]["prob"], "target": target["forget"]["prob"]}
    return points, refs


def tofu_points(out: Path) -> dict[str, tuple[float, float]]:
    points = {}
    for p in sorted((out / "evals").glob("*/TOFU_SUMMARY.json")):
        s = json.loads(p.read_text())
        if s.get("forget_quality") is not None:
            points[p.parent.name] = (s["model_utility"], s["forget_quality"])
    return points


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", type=Path)
    src.add_argument("--tofu", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default=None)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    if args.synthetic:
        points, refs = synthetic_points(args.synthetic)
        for label, y in refs.items():
            ax.axhline(y, ls="--", lw=0.8, color="grey")
            ax.text(0.01, y, label, va="bottom", fontsize=8, color="grey")
        ax.set_xlabel("retain answer probability (higher keeps more)")
        ax.set_ylabel("forget answer probability (lower forgets more)")
    else:
        points = tofu_points(args.tofu)
        if not points:
            raise SystemExit(f"error: no TOFU_SUMMARY.json with forget quality under {args.tofu}")
        ax.set_yscale("log")
        ax.set_xlabel("model utility (higher keeps more)")
        ax.set_ylabel("forget quality, KS p-value vs retain model (higher is better)")
    placed: list[tuple[float, float]] = []
    for name, (x, y) in sorted(points.items(), key=lambda kv: kv[1]):
        ax.scatter([x], [y], s=36, color="tab:red" if name == "alter" else "tab:blue")
        # A label next to an already labelled point (same height, close by) goes below it.
        near = any(
            abs(x - px) < 0.04 and abs(y - py) <= 0.1 * max(abs(py), 1e-12) for px, py in placed
        )
        offset = (4, -10) if near else (4, 3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
        placed.append((x, y))
    ax.set_title(args.title or ("built-in benchmark" if args.synthetic else "tofu-mini"))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(points)} points)")


if __name__ == "__main__":
    main()

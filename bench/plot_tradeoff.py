"""Forget-vs-utility scatter of every method from a benchmark's results (docs/RESULTS.md figures).

    python bench/plot_tradeoff.py --synthetic runs/bench-methods/results.json --out fig.png
    python bench/plot_tradeoff.py --tofu runs/tofu-mini --out fig.png
    python bench/plot_tradeoff.py --muse runs/muse-news-mini --out fig.png
    python bench/plot_tradeoff.py --sequential runs/sequential --out fig.png

``--synthetic``: bench/methods_synthetic.py's results.json; x = retain answer probability (utility
kept), y = forget answer probability (lower is more forgotten), with the target and the holdout
level (facts the target never saw) as reference lines. ``--tofu``: bench/tofu_mini.py's output
directory; x = model utility, y = forget quality (log scale, higher is closer to the retain
model), one point per evaluated model (retain model and target included). ``--muse``:
bench/muse_news_mini.py's output directory; x = KnowMem retain ROUGE (MUSE's utility), y =
PrivLeak % (0 = the retain model's membership signal; the target sits far below). ``--sequential``:
bench/sequential.py's output directory; one panel per stage evaluated (any invocation, chained or
independent), axes as ``--tofu``.
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


def muse_points(out: Path) -> tuple[dict[str, tuple[float, float]], dict]:
    summary = out / "summary.json"
    if not summary.is_file():
        raise SystemExit(f"error: no summary.json under {out} (run bench/muse_news_mini.py first)")
    models = json.loads(summary.read_text())["models"]
    points = {
        name: (m["retain_knowmem_ROUGE"], m["privleak"])
        for name, m in models.items()
        if m.get("privleak") is not None
    }
    if not points:
        raise SystemExit(f"error: no model with a PrivLeak value in {summary}")
    return points, {"retain model": 0.0}


def sequential_points(out: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """``{stage: {model: (utility, forget quality)}}`` from every evaluation under OUT/evals."""
    stages: dict[str, dict[str, tuple[float, float]]] = {}
    for p in sorted((out / "evals").glob("**/TOFU_SUMMARY.json")):
        s = json.loads(p.read_text())
        if s.get("forget_quality") is None:
            continue
        model = p.parent.parent.relative_to(out / "evals").as_posix()
        name = model.removeprefix("independent/").replace("chained/", "chained ")
        stages.setdefault(p.parent.name, {})[name] = (s["model_utility"], s["forget_quality"])
    return dict(sorted(stages.items()))


def _padded(values: list[float], *, log: bool) -> tuple[float, float]:
    """Axis limits around ``values`` with a margin (a factor of 2 on a log axis)."""
    if log:
        pos = [v for v in values if v > 0]
        lo, hi = (min(pos), max(pos)) if pos else (0.1, 1.0)
        return lo / 2, hi * 2
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
    return lo - pad, hi + pad


def scatter(ax, points: dict[str, tuple[float, float]], keep_y=()) -> None:
    """Draw and label the points (set the axes' scales first: labels are placed on screen);
    the y limits also hold every value of ``keep_y`` (reference lines)."""
    # Models at the same point share one label ("rmu, target").
    groups: dict[tuple[float, float], list[str]] = {}
    for name, (x, y) in points.items():
        # 6 significant digits, not decimals: forget quality can be 3e-7 (rounded to 0 it
        # vanished from a log axis).
        groups.setdefault((float(f"{x:.6g}"), float(f"{y:.6g}")), []).append(name)
    for (x, y), names in groups.items():
        ax.scatter(
            [x],
            [y],
            s=36,
            color="tab:red" if any(n.split("+")[0] == "alter" for n in names) else "tab:blue",
        )
    # Limits from the data, with a margin.
    ax.set_xlim(*_padded([x for x, _ in groups], log=False))
    ax.set_ylim(*_padded([y for _, y in groups] + list(keep_y), log=ax.get_yscale() == "log"))
    # Labels go above their point, top to bottom; a label whose spot is taken by the label of a
    # point close by on screen goes one line lower per such neighbour (below its own point).
    placed: list[tuple[float, float]] = []
    for (x, y), names in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        px, py = ax.transData.transform((x, y))
        near = sum(abs(px - qx) < 60 and abs(py - qy) < 12 for qx, qy in placed)
        ax.annotate(
            ", ".join(sorted(names)),
            (x, y),
            textcoords="offset points",
            xytext=(4, 3 - 10 * near),
            fontsize=8,
        )
        placed.append((px, py))
    ax.grid(alpha=0.3)


def tofu_axes(ax) -> None:
    ax.set_yscale("log")
    ax.set_xlabel("model utility (higher keeps more)")
    ax.set_ylabel("forget quality, KS p-value vs retain model (higher is better)")


def main(argv: list[str] | None = None) -> int:
    """Write the figure; returns the number of points drawn."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", type=Path)
    src.add_argument("--tofu", type=Path)
    src.add_argument("--muse", type=Path)
    src.add_argument("--sequential", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.sequential:
        stages = sequential_points(args.sequential)
        if not stages:
            raise SystemExit(
                f"error: no TOFU_SUMMARY.json with forget quality under {args.sequential}"
            )
        fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4.5), squeeze=False)
        for ax, (stage, points) in zip(axes[0], stages.items(), strict=True):
            tofu_axes(ax)
            scatter(ax, points)
            ax.set_title(stage)
        fig.suptitle(args.title or "sequential (independent stages)")
        n_points = sum(len(p) for p in stages.values())
    else:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        refs: dict[str, float] = {}
        if args.synthetic:
            points, refs = synthetic_points(args.synthetic)
            ax.set_xlabel("retain answer probability (higher keeps more)")
            ax.set_ylabel("forget answer probability (lower forgets more)")
        elif args.muse:
            points, refs = muse_points(args.muse)
            ax.set_xlabel("KnowMem retain ROUGE (higher keeps more)")
            ax.set_ylabel("PrivLeak % (0 = retain model)")
        else:
            points = tofu_points(args.tofu)
            if not points:
                raise SystemExit(
                    f"error: no TOFU_SUMMARY.json with forget quality under {args.tofu}"
                )
            tofu_axes(ax)
        for label, y in refs.items():
            ax.axhline(y, ls="--", lw=0.8, color="grey")
            ax.text(
                0.01,
                y,
                label,
                va="bottom",
                fontsize=8,
                color="grey",
                transform=ax.get_yaxis_transform(),
            )
        scatter(ax, points, keep_y=refs.values())
        default = (
            "built-in benchmark"
            if args.synthetic
            else "muse-news-mini"
            if args.muse
            else "tofu-mini"
        )
        ax.set_title(args.title or default)
        n_points = len(points)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({n_points} points)")
    return n_points


if __name__ == "__main__":
    main()

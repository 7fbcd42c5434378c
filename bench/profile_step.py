"""Where ALTER's Stage II step spends its time: the FLOP-floor ratio of docs/PERFORMANCE.md.

    python bench/profile_step.py [--model smollm2-135m] [--steps 4] [--out runs/profile_step.json]

Runs the Stage II steps of ``bench/efficiency.py`` (built-in benchmark rows, 4 forget + 4 retain
rows per step, D = 2 experts, one warm-up step) under ``torch.profiler`` with FLOP counting, and
splits the profiled wall time by operator (self CPU time): the matrix products (``aten::mm``,
``addmm``, ``bmm``: their FLOPs and achieved GFLOP/s against this process's 2048^2 matmul peak)
and the rest, largest first. Also measures the matmul throughput at the step's own shapes
(hidden 576, rows of ~55 tokens), which is what bounds the floor ``4 N T / peak`` here. The
same steps run once unprofiled first: their tokens/s and floor ratio are the real speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficiency import alter_stage_two, matmul_peak  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def shape_gflops(m: int, k: int, n: int, reps: int = 50) -> float:
    """fp32 GFLOP/s of an (m x k) @ (k x n) product, the shapes a step multiplies."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="runs/profile_step.json")
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from alter.data.synthetic import make_synthetic

    peak = matmul_peak()
    holder: dict = {}

    def around():
        holder["prof"] = profile(
            activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True
        )
        return holder["prof"]

    bench = make_synthetic()
    plain = alter_stage_two(args.model, bench, args.steps, 2)  # unprofiled: the real speed
    run = alter_stage_two(args.model, bench, args.steps, 2, around=around)  # same steps
    prof = holder["prof"]
    rows = []
    for ev in prof.key_averages():
        rows.append(
            {
                "op": ev.key,
                "self_s": ev.self_cpu_time_total / 1e6,
                "calls": ev.count,
                "flops": int(ev.flops or 0),
            }
        )
    rows.sort(key=lambda r: -r["self_s"])
    total = sum(r["self_s"] for r in rows)
    mm = [r for r in rows if r["op"] in MATMUL_OPS]
    mm_s, mm_flops = sum(r["self_s"] for r in mm), sum(r["flops"] for r in mm)
    tokens_per_step = run["tokens"] / run["steps"]
    rows_per_pass = 4
    width = round(tokens_per_step / (2 * rows_per_pass))  # ~tokens per row (padding aside)
    t = rows_per_pass * width  # rows of one pass, flattened
    shapes = {
        # (tokens x hidden) @ (hidden x out): q/o projections, MLP up/gate, MLP down, LM head.
        "attn 576x576": shape_gflops(t, 576, 576),
        "mlp 576x1536": shape_gflops(t, 576, 1536),
        "mlp 1536x576": shape_gflops(t, 1536, 576),
        "lm_head 576x49152": shape_gflops(t, 576, 49152, reps=5),
        "adapter 576x8": shape_gflops(t, 576, 8),
    }
    floor_flops = 4 * run["n_params"] * run["tokens"]
    res = {
        "matmul_peak_gflops": peak,
        "run": run,
        "unprofiled": plain,
        "tokens_per_row": width,
        "profiled_self_seconds": total,
        "matmul_self_seconds": mm_s,
        "matmul_share": mm_s / total,
        "matmul_gflop": mm_flops / 1e9,
        "matmul_achieved_gflops": mm_flops / 1e9 / mm_s if mm_s else None,
        "floor_gflop": floor_flops / 1e9,
        "matmul_gflop_over_floor": mm_flops / floor_flops,
        "shape_gflops": shapes,
        "top_ops": rows[:25],
    }
    by_shape = []
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key not in MATMUL_OPS:
            by_shape.append(
                {
                    "op": ev.key,
                    "shapes": str(ev.input_shapes),
                    "self_s": ev.self_cpu_time_total / 1e6,
                    "calls": ev.count,
                }
            )
    by_shape.sort(key=lambda r: -r["self_s"])
    res["top_other_ops_by_shape"] = by_shape[:25]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(
        f"matmul peak {peak:.0f} GFLOP/s; {run['tokens_per_second']:.0f} tokens/s, "
        f"{run['tokens']} tokens in {run['seconds']:.1f} s (profiled)"
    )
    print(
        f"matmul ops: {mm_s:.2f} of {total:.2f} s self time ({100 * mm_s / total:.0f}%), "
        f"{mm_flops / 1e9:.0f} GFLOP ({mm_flops / floor_flops:.2f}x the floor's 4NT), "
        f"{res['matmul_achieved_gflops']:.0f} GFLOP/s achieved"
    )
    for name, g in shapes.items():
        print(f"  {name:<20} at {t} rows: {g:6.0f} GFLOP/s")
    print("top operators by self time:")
    for r in rows[:15]:
        print(
            f"  {r['op']:<40} {r['self_s']:7.2f} s {100 * r['self_s'] / total:5.1f}%  "
            f"{r['calls']:6d} calls"
        )

    print("other operators by input shape:")
    for r in by_shape[:15]:
        print(f"  {r['op']:<24} {r['self_s']:6.2f} s {r['calls']:6d} calls  {r['shapes'][:90]}")


if __name__ == "__main__":
    main()

"""Memory and time of ALTER with the frozen base in float32 vs bfloat16 (``base_dtype``).

    python bench/bf16_base.py [--model smollm2-135m] [--steps 4] [--out runs/bf16_base.json]

For each base dtype, in a fresh subprocess (so that peak RSS is that dtype's alone): load the
model, run the base pre-pass over the built-in benchmark's rows, inject ALTER's adapters (float32
either way), run one warm-up Stage II step, then time ``--steps`` Stage II steps (a forget pass
and a retain pass each, backward, AdamW) and ``--steps`` no-grad forwards of the adapted model on
the first step's retain batch. The steps are the same in both runs (same rows, same seed).
Reports the weights' bytes, RSS after loading, peak RSS (``VmHWM``), seconds per step and per
forward, and the last step's loss (the two dtypes should agree to ~1e-2 relative: bf16 rounds
the base weights, nothing else). Prints a table; ``--out`` also writes JSON.

CPU notes: bf16 matmuls are fast only on CPUs with AVX512-BF16 / AMX; elsewhere torch converts
and the bf16 run can be slower than fp32 while still halving the weights' memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

DTYPES = ("float32", "bfloat16")


def measure(model_name: str, dtype_name: str, steps: int, max_length: int) -> dict:
    """One dtype, in this process: the quantities listed in the module docstring."""
    from alter.adapters.config import AlterConfig
    from alter.adapters.layer import Route
    from alter.adapters.model import AlterModel, num_layers
    from alter.data.collate import Collator, encode_rows
    from alter.data.synthetic import make_synthetic
    from alter.memory import status_mb
    from alter.methods.alter import (
        AlterTrainConfig,
        assign_subdomains,
        base_cache,
        stage_two,
        stage_two_plan,
    )
    from alter.models import check_base_dtype, load_model

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tok = load_model(model_name, dtype=check_base_dtype(dtype_name, "alter"))
    load_s = time.perf_counter() - t0
    weight_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    rss_loaded = status_mb("VmRSS")
    bench = make_synthetic()
    f_enc = encode_rows(bench.forget, tok, max_length=max_length)
    r_enc = encode_rows(bench.retain, tok, max_length=max_length)
    layer = num_layers(model.config) // 2
    kw = {"layer": layer, "q": 1.0, "q_struct": 0.5, "progress": False}
    t0 = time.perf_counter()
    f_cache = base_cache(model, f_enc, tok.pad_token_id, **kw)
    r_cache = base_cache(model, r_enc, tok.pad_token_id, **kw)
    prepass_s = time.perf_counter() - t0
    labels, names, _ = assign_subdomains(list(bench.forget), f_cache, None, 0)
    am = AlterModel(model, AlterConfig(n_forget_experts=len(names), routing_layer=layer))
    losses: list[float] = []

    def run(n: int, seed: int) -> float:
        tcfg = AlterTrainConfig(
            epochs=1000, max_steps=n, seed=seed, checkpoint_every=None, max_length=max_length
        )
        t = time.perf_counter()
        stage_two(
            am,
            f_enc,
            f_cache,
            labels,
            r_enc,
            r_cache,
            tok.pad_token_id,
            tcfg,
            progress=False,
            log=lambda rec: losses.append(rec["loss"]),
        )
        return time.perf_counter() - t

    run(1, seed=1)  # warm-up (another seed's first batch)
    step_s = run(steps, seed=0) / steps
    _, _, r_idx = stage_two_plan(labels, len(r_enc), AlterTrainConfig(seed=0))[0]
    batch = Collator(tok.pad_token_id)([r_enc[i] for i in r_idx])
    am.eval()
    with torch.no_grad(), am.routing(Route()):
        am.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])  # warm-up
        t = time.perf_counter()
        for _ in range(steps):
            am.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        forward_s = (time.perf_counter() - t) / steps
    adapter = am.adapter_tensors().values()
    return {
        "model": model_name,
        "base_dtype": dtype_name,
        "adapter_dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in adapter}),
        "weights_mb": weight_mb,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": status_mb("VmHWM"),
        "load_s": load_s,
        "prepass_s": prepass_s,
        "step_s": step_s,
        "forward_s": forward_s,
        "steps": steps,
        "step_tokens": int(batch["attention_mask"].sum()),
        "last_loss": losses[-1],
        "threads": torch.get_num_threads(),
    }


def table(rows: list[dict]) -> str:
    cols = [
        ("base_dtype", "{}"),
        ("weights_mb", "{:.1f}"),
        ("rss_after_load_mb", "{:.0f}"),
        ("peak_rss_mb", "{:.0f}"),
        ("step_s", "{:.3f}"),
        ("forward_s", "{:.4f}"),
        ("last_loss", "{:.4f}"),
    ]
    head = " | ".join(c for c, _ in cols)
    lines = [f"| {head} |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f.format(r[c]) for c, f in cols) + " |" for r in rows]
    a, b = rows
    lines.append(
        f"\nbf16 / fp32: weights {b['weights_mb'] / a['weights_mb']:.2f}, peak RSS "
        f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}, step time {b['step_s'] / a['step_s']:.2f}, "
        f"forward time {b['forward_s'] / a['forward_s']:.2f}; last loss relative difference "
        f"{abs(b['last_loss'] - a['last_loss']) / abs(a['last_loss']):.1e}"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=4, help="timed Stage II steps and forwards")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--child", choices=DTYPES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.child, args.steps, args.max_length)))
        return
    rows = []
    for dtype in DTYPES:  # one after the other: never two measurements at once
        argv = [sys.executable, __file__, "--child", dtype, "--model", args.model]
        argv += ["--steps", str(args.steps), "--max-length", str(args.max_length)]
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"{dtype} run failed:\n{res.stderr[-2000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"{args.model}, {args.steps} ALTER Stage II steps, {rows[0]['threads']} threads\n")
    print(table(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

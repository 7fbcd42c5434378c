"""Efficiency of ALTER on this machine, as ratios measured in one run (docs/PERFORMANCE.md).

    python bench/efficiency.py [--model smollm2-135m] [--steps 8] [--out runs/efficiency.json]

Measures, on the built-in benchmark's rows and the same batches for every contender:

1. the fp32 matmul peak (GFLOP/s) of this machine, in this process;
2. training throughput (tokens/s, excluding set-up) of ALTER's Stage II step (with the spec's
   retain NLL, and with the retain KL instead: ``--only retain-kl`` for that part), a plain peft LoRA
   step (same rank, same seven projections, IHL + retain NLL), AsymLoRA, and full-parameter GA
   and NPO steps, all through their real training code (``stage_two`` / ``run_method``);
3. ALTER's tokens/s against the FLOP floor ``4 * n_params * tokens / peak`` (forward 2NT plus
   the activation-gradient half of the backward 2NT: the base weights get no gradient);
4. expert scaling: Stage II step time with D = 8 forget experts over D = 1;
5. inference: log-likelihood evaluation and greedy ``generate`` tokens/s of the ALTER-wrapped
   model over the plain model, for the spec's design (the frozen base pre-pass, ~2 forwards per
   token), the entropy probe with the pre-pass stopped at the routing block, and the probe with
   ``layers=upper`` (a single pass), the last two also with the routing layer at block 5
   (``_r5``: a shorter pre-pass, or adapters in blocks 5..); ``--only inference`` runs just
   this part; every model is built once and timed ``--repeats`` times in rotating order, the
   ratios are of the medians;
6. peak RSS of one ALTER run and one full-parameter run (separate subprocesses).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def alter_stage_two(
    model_name, bench, steps, n_experts, seed=0, around=contextlib.nullcontext, **train
) -> dict:
    """Time ``steps`` Stage II steps with ``n_experts`` forget experts (oracle labels
    round-robin); the timed steps run inside ``around()`` (bench/profile_step.py: a profiler).
    ``train``: AlterTrainConfig options (e.g. ``gamma=0, retain_kl=1``)."""
    from alter.adapters.config import AlterConfig
    from alter.adapters.model import AlterModel, num_layers
    from alter.data.collate import encode_rows
    from alter.methods.alter import AlterTrainConfig, base_cache, stage_two, stage_two_plan
    from alter.models import load_model

    model, tok = load_model(model_name)
    f_enc, r_enc = encode_rows(bench.forget, tok), encode_rows(bench.retain, tok)
    layer = num_layers(model.config) // 2
    kw = {"layer": layer, "q": 1.0, "q_struct": 0.5, "progress": False}
    f_cache = base_cache(model, f_enc, tok.pad_token_id, **kw)
    r_cache = base_cache(model, r_enc, tok.pad_token_id, **kw)
    labels = [i % n_experts for i in range(len(f_enc))]
    am = AlterModel(model, AlterConfig(n_forget_experts=n_experts, routing_layer=layer))
    tcfg = AlterTrainConfig(epochs=1000, max_steps=steps, seed=seed, checkpoint_every=None, **train)
    plan = stage_two_plan(labels, len(r_enc), tcfg)
    tokens = sum(len(f_enc[i].input_ids) for _, f, _ in plan for i in f) + sum(
        len(r_enc[i].input_ids) for _, _, r in plan for i in r
    )

    def run(cfg: AlterTrainConfig) -> None:
        args = (am, f_enc, f_cache, labels, r_enc, r_cache, tok.pad_token_id, cfg)
        stage_two(*args, progress=False, log=lambda r: None)

    run(AlterTrainConfig(epochs=1000, max_steps=1, checkpoint_every=None, **train))  # warm-up
    with around():
        t0 = time.perf_counter()
        run(tcfg)
        secs = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "seconds": secs,
        "steps": steps,
        "tokens": tokens,
        "tokens_per_second": tokens / secs,
        "n_params": n_params,
        "n_experts": n_experts,
    }


def baseline(model_name, bench, method, steps, **overrides) -> dict:
    from alter.api import resolve_baseline_configs
    from alter.methods import METHODS
    from alter.methods.loop import run_method
    from alter.models import load_model

    model, tok = load_model(model_name)
    u, m = resolve_baseline_configs(
        method, {"epochs": 1000, "max_steps": steps, "checkpoint_every": None, **overrides}
    )
    s = run_method(METHODS[method](m), model, tok, bench.forget, bench.retain, u, progress=False)
    return {
        "seconds": s["train_seconds"],
        "steps": steps,
        "tokens": s["tokens"],
        "tokens_per_second": s["tokens_per_second"],
    }


@torch.no_grad()
def inference(model_name, bench, n_rows=32, new_tokens=32, repeats=3) -> dict:
    """Log-likelihood and ``generate`` speed of each ALTER variant over the plain model.

    Every model is built once, then each repeat times every variant in turn (the order rotates
    from one repeat to the next), so a slow spell of the machine hits all of them alike; the
    ratios are of the medians over ``repeats``.
    """
    from alter.adapters.config import AlterConfig
    from alter.adapters.model import AlterModel
    from alter.data.collate import encode_rows
    from alter.data.schema import RowSet
    from alter.evals.qa import answer_nll, generate_answers
    from alter.models import load_model

    rows = RowSet(list(bench.retain)[:n_rows], source="retain-head", kind="qa")
    warm = RowSet(list(rows)[:4], source="w", kind="qa")
    questions = [r["question"] for r in rows]
    # name -> (layers, inference, routing layer) of the ALTER variants; "alter" is the spec's
    # design (routing layer None = n_layers // 2).
    variants = {
        "base": None,
        "alter": ("all", "prepass", None),
        "alter_probe": ("all", "probe", None),
        "alter_upper_probe": ("upper", "probe", None),
        "alter_probe_r5": ("all", "probe", 5),
        "alter_upper_probe_r5": ("upper", "probe", 5),
    }
    models, tok = {}, None
    for name, variant in variants.items():
        model, tok = load_model(model_name)
        if variant is not None:
            layers, mode, routing_layer = variant
            cfg = AlterConfig(
                n_forget_experts=2, layers=layers, inference=mode, routing_layer=routing_layer
            )
            model = AlterModel(model, cfg)
            for m in model.layers():  # non-zero experts and probe so every path is exercised
                m.alter_B_r.normal_(std=1e-3)
                for b in m.alter_B_f:
                    b.normal_(std=1e-3)
            model.router.alter_probe[-1] = 1.0
        model.eval()
        answer_nll(model, tok, warm)
        models[name] = model
    ll_tokens = sum(len(e.input_ids) for e in encode_rows(rows, tok))
    times: dict[str, dict[str, list[float]]] = {n: {"ll": [], "gen": []} for n in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            answer_nll(models[name], tok, rows)
            times[name]["ll"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            generate_answers(models[name], tok, questions, max_new_tokens=new_tokens)
            times[name]["gen"].append(time.perf_counter() - t0)
    out: dict = {"repeats": repeats, "rows": len(rows), "new_tokens": new_tokens}
    for name in variants:
        t_ll, t_gen = statistics.median(times[name]["ll"]), statistics.median(times[name]["gen"])
        out[name] = {
            "loglik_tokens_per_second": ll_tokens / t_ll,
            "generate_rows_per_second": len(rows) / t_gen,
            "generate_seconds": t_gen,
            "loglik_seconds": t_ll,
            "loglik_seconds_all": times[name]["ll"],
            "generate_seconds_all": times[name]["gen"],
        }
    for name in variants:
        if name == "base":
            continue
        suffix = name.removeprefix("alter")
        out[f"loglik_ratio{suffix}"] = (
            out[name]["loglik_tokens_per_second"] / out["base"]["loglik_tokens_per_second"]
        )
        out[f"generate_ratio{suffix}"] = (
            out["base"]["generate_seconds"] / out[name]["generate_seconds"]
        )
    return out


def peak_rss(model_name: str, method: str, steps: int) -> float:
    """Peak RSS (MB) of a subprocess that loads the model and runs ``steps`` steps of ``method``."""
    code = (
        "import resource, sys, json\n"
        "from alter.data.synthetic import make_synthetic\n"
        "from alter.pipeline import unlearn_and_save\n"
        "b = make_synthetic()\n"
        f"unlearn_and_save({model_name!r}, b.forget, b.retain, method={method!r}, "
        f"overrides={{'max_steps': {steps}, 'epochs': 1000, 'checkpoint_every': None"
        + (", 'stage1_max_steps': 2" if method == "alter" else "")
        + "}, progress=False)\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent.
        "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def save(out: str, res: dict, shown: dict) -> None:
    """Write every measurement to ``out`` and print the ratios ``shown``."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2))
    print(json.dumps(shown, indent=2))


def retain_kl_ratios(res: dict) -> dict:
    """The retain KL's cost: its Stage II tokens/s over the spec's and over peft LoRA's."""
    kl = res["alter_D2_retain_kl"]["tokens_per_second"]
    return {
        "alter_retain_kl_vs_alter_tokens_per_s": kl / res["alter_D2"]["tokens_per_second"],
        "alter_retain_kl_vs_lora_tokens_per_s": kl / res["lora"]["tokens_per_second"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="inference timings per variant (median)")
    ap.add_argument("--out", default="runs/efficiency.json")
    ap.add_argument(
        "--only",
        choices=["inference", "retain-kl"],
        default=None,
        help="inference: part 5 only; retain-kl: ALTER's Stage II with the spec's retain NLL, "
        "with the retain KL instead (gamma=0, retain_kl=1) and the peft LoRA step",
    )
    args = ap.parse_args()
    from alter.data.synthetic import make_synthetic

    bench = make_synthetic()
    res: dict = {"threads": torch.get_num_threads(), "model": args.model}
    if args.only == "inference":
        res["inference"] = inference(args.model, bench, repeats=args.repeats)
        save(args.out, res, {k: v for k, v in res["inference"].items() if "ratio" in k})
        return
    res["matmul_gflops"] = matmul_peak()
    print(f"matmul peak {res['matmul_gflops']:.0f} GFLOP/s", flush=True)
    res["alter_D2"] = alter_stage_two(args.model, bench, args.steps, 2)
    res["alter_D2_retain_kl"] = alter_stage_two(
        args.model, bench, args.steps, 2, gamma=0.0, retain_kl=1.0
    )
    if args.only == "retain-kl":
        res["lora"] = baseline(args.model, bench, "lora", args.steps, loss="ihl", lr=1e-3)
        res["ratios"] = retain_kl_ratios(res)
        save(args.out, res, res["ratios"])
        return
    res["alter_D1"] = alter_stage_two(args.model, bench, args.steps, 1)
    res["alter_D8"] = alter_stage_two(args.model, bench, args.steps, 8)
    for m, ov in (("lora", {"loss": "ihl", "lr": 1e-3}), ("asymlora", {}), ("ga", {}), ("npo", {})):
        res[m] = baseline(args.model, bench, m, args.steps, **ov)
        print(m, res[m], flush=True)
    a = res["alter_D2"]
    floor_s = 4 * a["n_params"] * a["tokens"] / (res["matmul_gflops"] * 1e9)
    res["ratios"] = {
        "alter_vs_flop_floor": floor_s / a["seconds"],
        "alter_vs_lora_tokens_per_s": a["tokens_per_second"] / res["lora"]["tokens_per_second"],
        "alter_vs_asymlora_tokens_per_s": a["tokens_per_second"]
        / res["asymlora"]["tokens_per_second"],
        "alter_vs_ga_step_time": (a["seconds"] / a["steps"])
        / (res["ga"]["seconds"] / res["ga"]["steps"]),
        "alter_vs_npo_step_time": (a["seconds"] / a["steps"])
        / (res["npo"]["seconds"] / res["npo"]["steps"]),
        "experts_D8_over_D1_time": res["alter_D8"]["seconds"] / res["alter_D1"]["seconds"],
        **retain_kl_ratios(res),
    }
    res["inference"] = inference(args.model, bench, repeats=args.repeats)
    res["ratios"]["alter_vs_base_loglik"] = res["inference"]["loglik_ratio"]
    res["ratios"]["alter_vs_base_generate"] = res["inference"]["generate_ratio"]
    for k, v in res["inference"].items():
        if k.startswith(("loglik_ratio_", "generate_ratio_")):
            res["ratios"][f"alter{k.split('ratio', 1)[1]}_vs_base_{k.split('_')[0]}"] = v
    res["peak_rss_mb"] = {m: peak_rss(args.model, m, 4) for m in ("alter", "ga")}
    res["ratios"]["alter_vs_full_ft_peak_rss"] = (
        res["peak_rss_mb"]["alter"] / res["peak_rss_mb"]["ga"]
    )
    res["self_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save(args.out, res, res["ratios"])


if __name__ == "__main__":
    main()

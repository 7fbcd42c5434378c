"""What the cheap inference designs cost in quality: entropy probe and the upper-layers layout.

    python bench/inference_probe.py --target DIR [--out runs/bench-probe] [--epochs 10]
        [--layouts all,upper,upper:5]

Trains ALTER once per layout on the built-in benchmark from the fine-tuned target DIR (what
`alter demo` caches under $ALTER_HOME/targets/), same seed and budget as the demo. A layout is
``LAYERS[:ROUTING_LAYER]``: ``all`` (the spec: adapters in every decoder block, routing layer
n_layers // 2) or ``upper`` (adapters only in the blocks from the routing layer up); ``:N`` sets
the routing layer (``upper:5``: adapters in blocks 5.. and the route read at block 5). Each run
is then evaluated with the exact base pre-pass (``inference=prepass``) and with the entropy
probe (``inference=probe``; with ``upper`` that is single-pass inference):

* probe fidelity on every set (forget / retain / holdout; holdout rows were never used to fit
  it): R^2 of the predicted against the exact base entropy over all positions, the share of
  positions where the high/low switch (entropy > threshold) agrees, and the mean absolute change
  of the total forget-expert weight per position;
* forget / retain / holdout answer probability, ROUGE-L recall and fact recall of each variant.

Resumable: finished runs are reused. Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from alter.data.collate import batches, encode_rows
from alter.data.synthetic import SyntheticConfig, make_synthetic
from alter.evals.qa import qa_metrics, summarise

SETS = ("forget", "retain", "holdout")


@torch.no_grad()
def probe_fidelity(am, tok, rows) -> dict:
    exact, pred, agree, n, dmass = [], [], 0, 0, 0.0
    for b in batches(encode_rows(rows, tok), 8, tok.pad_token_id):
        pre, _ = am.prepass(b["input_ids"], b["attention_mask"])
        probe = am._probe_prepass(pre.hidden)
        m = b["attention_mask"].bool()
        exact.append(pre.entropy[m])
        pred.append(probe.entropy[m])
        agree += int(((pre.entropy > am.threshold) == (probe.entropy > am.threshold))[m].sum())
        n += int(m.sum())
        w_exact = am.route_from_prepass(pre).expert_weights.sum(-1)
        w_probe = am.route_from_prepass(probe).expert_weights.sum(-1)
        dmass += float((w_exact - w_probe).abs()[m].sum())
    y, p = torch.cat(exact).double(), torch.cat(pred).double()
    r2 = 1 - float((y - p).pow(2).sum() / (y - y.mean()).pow(2).sum())
    return {"r2": r2, "switch_agreement": agree / n, "mean_abs_expert_mass_change": dmass / n}


def parse_layout(text: str) -> tuple[str, str, int | None]:
    """``"upper:5"`` -> ``("upper:5", "upper", 5)``; ``"all"`` -> ``("all", "all", None)``."""
    name = text.strip()
    layers, sep, layer = name.partition(":")
    if layers not in ("all", "upper") or (sep and not layer.isdigit()):
        raise SystemExit(
            f"--layouts: expected LAYERS[:ROUTING_LAYER] with LAYERS all|upper, got {name!r}"
        )
    return name, layers, int(layer) if sep else None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--target", required=True)
    ap.add_argument("--out", default="runs/bench-probe")
    ap.add_argument("--epochs", type=float, default=10.0)
    ap.add_argument(
        "--layouts",
        default="all,upper",
        help="comma-separated LAYERS[:ROUTING_LAYER] (default: all,upper)",
    )
    args = ap.parse_args()
    layouts = [parse_layout(x) for x in args.layouts.split(",") if x.strip()]

    from alter.api import load, unlearn
    from alter.runs import is_complete

    bench = make_synthetic(SyntheticConfig(seed=0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name, layers, routing_layer in layouts:
        run = out / name.replace(":", "-r")
        rec: dict = {}
        if not is_complete(run):
            t0 = time.perf_counter()
            unlearn(
                args.target,
                forget=bench.forget,
                retain=bench.retain,
                out=run,
                overwrite=True,
                epochs=args.epochs,
                layers=layers,
                routing_layer=routing_layer,
            )
            rec["unlearn_seconds"] = time.perf_counter() - t0
        am, tok = load(args.target, run)
        rec["probe_fit"] = json.loads((run / "summary.json").read_text()).get("entropy_probe")
        rec["fidelity"] = {s: probe_fidelity(am, tok, getattr(bench, s)) for s in SETS}
        for mode in ("prepass", "probe"):
            am.set_inference(mode)
            rec[mode] = {
                s: summarise(qa_metrics(am, tok, getattr(bench, s), max_new_tokens=32))
                for s in SETS
            }
        results[name] = rec
        (out / "results.json").write_text(json.dumps(results, indent=2))

    lines = [
        "| layers | inference | forget prob / fact | retain prob / fact | holdout prob / fact |",
        "|---|---|---|---|---|",
    ]
    for layers, rec in results.items():
        for mode in ("prepass", "probe"):
            cells = [
                f"{rec[mode][s]['prob']:.3f} / {rec[mode][s].get('fact_recall', float('nan')):.3f}"
                for s in SETS
            ]
            lines.append(f"| {layers} | {mode} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| layers | set | probe R^2 | high/low switch agreement | mean abs change of expert mass |",
        "|---|---|---|---|---|",
    ]
    for layers, rec in results.items():
        for s in SETS:
            f = rec["fidelity"][s]
            lines.append(
                f"| {layers} | {s} | {f['r2']:.3f} | {f['switch_agreement']:.3f} | "
                f"{f['mean_abs_expert_mass_change']:.3f} |"
            )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

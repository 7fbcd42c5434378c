"""tofu-mini: the TOFU protocol at CPU scale, on the real TOFU files.

    python bench/tofu_mini.py [--data ../shared/data] [--methods alter,gd,npo,simnpo] \
        [--retain-items 160] [--epochs 5] [--out runs/tofu-mini]

Authors: TOFU's forget01 authors (the last two of the 200: 40 QA rows) are forgotten; the
retain rows are exactly the first ``--retain-items`` items of TOFU's ``retain_perturbed``
evaluation set (so retain utility is measured on facts the target was taught; 160 items come
from 9 authors). Every forget row carries its author as ``subdomain`` (ALTER: one forget expert
per author; ``bench/tofu_alter_sweep.py`` compares with k-means clusters). The target is SmolLM2 fine-tuned on forget + retain rows, the retain model on the
retain rows only (the reference of forget quality), both cached under OUT. Every method then
unlearns the 40 forget rows with the same budget (``--epochs`` passes, batches of 4 + 4, the
method's default lr) and is evaluated with the full TOFU metric set (`alter eval --benchmark
tofu`: forget01 + retain_perturbed[:N] + real_authors + world_facts, forget quality against the
retain model, model utility). The same command with ``--retain-items 400`` and all 200 authors is
the full protocol, for a GPU. Then the attacks of `alter attack` (relearning on the even forget
rows measured on the odd ones, a jailbreak-style prefix, int8 / int4 rounding) run on the target
and every method (OUT/attacks/<name>.json). Resumable: finished stages are skipped. Writes
OUT/table.md and OUT/attacks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402

FORGET_AUTHORS = P.FORGET01_AUTHORS
ROWS_PER_AUTHOR = P.TOFU_ROWS_PER_AUTHOR


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument(
        "--methods",
        default="alter,gd,npo,simnpo",
        help="methods to unlearn with ('' only fine-tunes and evaluates the target and the retain "
        "model, the references bench/tofu_alter_sweep.py needs)",
    )
    ap.add_argument("--retain-items", type=int, default=160)
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--ft-epochs", type=float, default=5.0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default="runs/tofu-mini")
    ap.add_argument(
        "--attacks",
        default="none,relearn,prefix,int8,int4",
        help="attacks run on the target and every method's model after evaluation ('' skips; "
        "TOFU has no paraphrased questions, so 'paraphrase' does not apply)",
    )
    args = ap.parse_args(argv)

    from alter.data.benchmarks import load_tofu
    from alter.data.schema import RowSet
    from alter.evals.runner import EvalOptions, run_eval
    from alter.pipeline import finetune_and_save, unlearn_and_save
    from alter.runs import is_complete
    from alter.train import FinetuneConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tofu_dir = Path(args.data) / "tofu"
    full, covered, retain = P.tofu_retain(tofu_dir, args.retain_items, "tofu-mini:retain")
    n_retain_authors = len({i // ROWS_PER_AUTHOR for i in covered})
    # Each forget row names its author as its subdomain: one ALTER forget expert per author.
    forget = RowSet(
        P.tofu_author_rows(full, FORGET_AUTHORS), source="tofu-mini:forget01", kind="qa"
    )
    assert [r["question"] for r in forget] == [
        r["question"] for r in load_tofu("forget01", tofu_dir)
    ]
    print(
        f"tofu-mini: forget {len(forget)} rows (authors {FORGET_AUTHORS}), retain {len(retain)} rows "
        f"({n_retain_authors} authors)",
        flush=True,
    )
    ft = FinetuneConfig(epochs=args.ft_epochs, lr=5e-5, seed=0)
    models = {
        "target": RowSet([*retain, *forget], source="tofu-mini:train", kind="qa"),
        "retain_model": retain,
    }
    timings = (
        json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}
    )
    for name, rows in models.items():
        if not is_complete(out / name):
            t0 = time.perf_counter()
            finetune_and_save(args.model, rows, ft, out / name, overwrite=True, evaluate=False)
            timings[f"finetune_{name}"] = time.perf_counter() - t0
            (out / "timings.json").write_text(json.dumps(timings, indent=2))

    # every model's answers are scored for fluency under the target (docs/RESULTS.md)
    opts = EvalOptions(
        forget_split="forget01",
        max_new_tokens=args.max_new_tokens,
        fluency=True,
        original=str(out / "target"),
    )

    def evaluate(tag: str, model: str, adapter: str | None, reference) -> None:
        d = out / "evals" / tag
        if is_complete(d):
            return
        t0 = time.perf_counter()
        run_eval(
            model,
            adapter,
            "tofu",
            args.data,
            d,
            reference,
            args.retain_items,
            options=opts,
            overwrite=True,
        )
        timings[f"eval_{tag}"] = time.perf_counter() - t0
        (out / "timings.json").write_text(json.dumps(timings, indent=2))

    evaluate("retain_model", str(out / "retain_model"), None, None)
    reference = out / "evals" / "retain_model"
    evaluate("target", str(out / "target"), None, reference)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        run = out / "runs" / m
        if not is_complete(run):
            t0 = time.perf_counter()
            unlearn_and_save(
                str(out / "target"),
                forget,
                retain,
                out=run,
                method=m,
                overrides={"epochs": args.epochs, "seed": 0},
                overwrite=True,
            )
            timings[f"unlearn_{m}"] = time.perf_counter() - t0
            (out / "timings.json").write_text(json.dumps(timings, indent=2))
        evaluate(m, *P.model_spec(run, str(out / "target")), reference)

    keys = (
        "forget_quality",
        "model_utility",
        "forget_Q_A_Prob",
        "forget_Q_A_ROUGE",
        "forget_truth_ratio",
        "retain_Q_A_Prob",
        "retain_Q_A_ROUGE",
    )
    rows = ["| model | " + " | ".join(keys) + " | unlearn s |", "|" + "---|" * (len(keys) + 2)]
    for tag in ["retain_model", "target", *methods]:
        p = out / "evals" / tag / "TOFU_SUMMARY.json"
        if not p.is_file():
            continue
        s = json.loads(p.read_text())
        cells = []
        for k in keys:
            v = s.get(k)
            cells.append(
                "n/a" if v is None else (f"{v:.3g}" if k == "forget_quality" else f"{v:.3f}")
            )
        wall = timings.get(f"unlearn_{tag}")
        rows.append(
            f"| {tag} | " + " | ".join(cells) + f" | {wall:.0f} |"
            if wall
            else f"| {tag} | " + " | ".join(cells) + " | - |"
        )
    (out / "table.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    if args.attacks:
        attack_table(
            out,
            forget,
            retain,
            target=str(out / "target"),
            names=methods,
            attacks=args.attacks.split(","),
            max_new_tokens=args.max_new_tokens,
        )


def _load_spec(out: Path, name: str, target: str) -> tuple[str, str | None]:
    return (target, None) if name == "target" else P.model_spec(out / "runs" / name, target)


def attack_table(
    out: Path,
    forget,
    retain,
    *,
    target: str,
    names: list[str],
    attacks: list[str],
    max_new_tokens: int,
) -> None:
    from alter.api import load
    from alter.attacks import run_attacks

    (out / "attacks").mkdir(exist_ok=True)
    names = ["target", *names]
    for name in names:
        path = out / "attacks" / f"{name}.json"
        if path.is_file():
            continue
        print(f"{name}: attacking ...", flush=True)
        spec = _load_spec(out, name, target)
        t0 = time.perf_counter()
        results = run_attacks(
            lambda s=spec: load(*s), forget, retain, attacks, max_new_tokens=max_new_tokens
        )
        rec = {"method": name, "results": results, "seconds": time.perf_counter() - t0}
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(rec, indent=2))
        tmp.replace(path)
    cols = [("none", "forget"), ("none", "heldout_half")] + [
        (a, "forget") for a in attacks if a != "none"
    ]
    head = ["none" if k == "forget" else "none, held-out half" for a, k in cols if a == "none"]
    head += [f"{a}, held-out half" if a == "relearn" else a for a, _ in cols if a != "none"]
    lines = [
        "| model | " + " | ".join(head) + " | retain prob after int4 |",
        "|" + "---|" * (len(cols) + 2),
    ]
    for name in names:
        res = json.loads((out / "attacks" / f"{name}.json").read_text())["results"]
        cells = [
            f"{res[a][k]['prob']:.3f} / {res[a][k]['rougeL_recall']:.2f}" if a in res else "-"
            for a, k in cols
        ]
        int4 = f"{res['int4']['retain']['prob']:.3f}" if "int4" in res else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {int4} |")
    (out / "attacks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

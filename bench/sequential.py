"""sequential: the paper's sequential ablation on TOFU, the forget set expanded from 1% to 10%.

    python bench/sequential.py [--data ../shared/data] [--methods alter,gd,npo] \\
        [--stages forget01,forget05,forget10] [--rows-per-author 4] [--retain-items 40] \\
        [--out runs/sequential]

Full size, for a GPU (TOFU's whole forget splits and evaluation sets; the retain side stays
retain_perturbed's 400 items, not TOFU's 3600 retain90 rows):

    python bench/sequential.py --rows-per-author 20 --retain-items 400 --utility-items 0 \\
        --max-new-tokens 200 --fluency --out runs/sequential-full

Stages are TOFU's nested forget splits: forget01 (the last 2 of the 200 authors), forget05 (the
last 10), forget10 (the last 20). Each author keeps its first ``--rows-per-author`` of its 20 QA
rows (20 = TOFU's splits), so the stages keep TOFU's 1 : 5 : 10 proportion at CPU cost. The
target is ``--model`` fine-tuned on the forget10 rows + the first ``--retain-items`` items of
``retain_perturbed`` (as bench/tofu_mini.py selects them); the retain model on those retain rows
only, a valid reference for every stage (it never saw any forget author). Every forget row
carries its author as ``subdomain`` (ALTER: one forget expert per author).

Each stage unlearns its cumulative forget set (forget05 includes forget01's authors) with the
same budget for every method (``--epochs`` passes over the stage's forget rows, batches of
4 + 4, the method's default lr). By default every stage starts from the target: independent
runs on the expanding sets, valid for every method. ``--chained`` starts each stage from the
previous stage's unlearned model (the first from the target), the sequential-request setting;
it is only defined for the full-parameter methods (ga, gd, npo, npo_kl, simnpo, rmu): an
adapter method's result (ALTER's routed adapter, LoRA) cannot be merged into the next stage's
base. A chained stage still unlearns the whole cumulative set; NPO's reference is the model the
stage starts from.

``--set KEY=VALUE`` (repeatable) with ``--variant NAME`` runs the listed methods with other
options (as ``alter unlearn --set``) next to their default runs: runs, evaluations and table rows
are named ``METHOD+NAME``, e.g. ``--methods alter --stages forget10 --set router_fit_steps=200
--variant fit``. A name keeps its options (OUT/variants.json).

After each stage the TOFU metrics (`alter eval --benchmark tofu`) of the retain model, the
target and every method on that stage's forget rows, the retain rows and the first
``--utility-items`` real_authors / world_facts items: forget quality (KS test of the truth
ratios against the retain model's on the same forget rows) and model utility. The evaluated
rows are written to OUT/data/tofu. Resumable: finished stages are skipped. Writes OUT/table.md
(one row per model and stage) and OUT/summary.json for the mode that ran (``(chained)`` marks
chained rows).

Run time of the default command on 2 CPU cores with SmolLM2-135M, estimated from ~0.6 s per
QA row per epoch of fine-tuning and 2-4 s per unlearning step of 4 + 4 rows: fine-tuning the
target (120 rows) and the retain model (40 rows) for 5 epochs ~8 min; unlearning 10 + 50 + 100
= 160 steps per method, GD ~10 min, NPO ~8 min, ALTER ~7 min; 15 evaluations (8 / 40 / 80
forget rows + 40 retain + 40 + 40 utility items, 32 new tokens; ALTER's adapter evaluates ~2.4x
slower) ~30 min: about an hour in all. ``--stages forget01,forget05`` takes about half.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402

# Authors of each stage: the last N of TOFU's 200 (forgetXX is the tail of full).
STAGES = {"forget01": 2, "forget05": 10, "forget10": 20}
ROWS_PER_AUTHOR = P.TOFU_ROWS_PER_AUTHOR
N_AUTHORS = P.TOFU_AUTHORS
# Methods whose result is a whole model, so a stage can start from the previous one.
FULL_PARAMETER = ("ga", "gd", "npo", "npo_kl", "simnpo", "rmu")
PROTOCOL_KEYS = (
    "model",
    "data",
    "rows_per_author",
    "retain_items",
    "utility_items",
    "ft_epochs",
    "epochs",
    "max_new_tokens",
    "fluency",
)
COLUMNS = (
    ("forget_quality", ".3g"),
    ("model_utility", ".3f"),
    ("forget_Q_A_Prob", ".3f"),
    ("forget_Q_A_ROUGE", ".3f"),
    ("forget_truth_ratio", ".3f"),
    ("retain_Q_A_Prob", ".3f"),
    ("retain_Q_A_ROUGE", ".3f"),
)


def stage_rows(rows: list, stage: str, k: int) -> list:
    """The first ``k`` rows of every author of ``stage`` from a 20-rows-per-author list of the
    stage's authors (``forgetXX`` / ``forgetXX_perturbed`` order)."""
    n = STAGES[stage]
    assert len(rows) == n * ROWS_PER_AUTHOR, (stage, len(rows))
    return [rows[a * ROWS_PER_AUTHOR + j] for a in range(n) for j in range(k)]


def write_eval_data(tofu_dir: Path, root: Path, k: int, n_retain: int, n_utility: int | None):
    """The evaluated TOFU rows as a TOFU data folder (``root/tofu``), written atomically."""
    from alter.data.benchmarks import load_tofu
    from alter.runs import atomic_dir, is_complete

    if is_complete(root):
        return
    with atomic_dir(root, overwrite=True, meta={"what": "sequential: evaluated TOFU rows"}) as tmp:
        (tmp / "tofu").mkdir()
        files = {
            f"{s}_perturbed": stage_rows(load_tofu(f"{s}_perturbed", tofu_dir).rows, s, k)
            for s in STAGES
        }
        files["retain_perturbed"] = load_tofu("retain_perturbed", tofu_dir).rows[:n_retain]
        for split in ("real_authors_perturbed", "world_facts_perturbed"):
            files[split] = load_tofu(split, tofu_dir).rows[:n_utility]
        for name, rows in files.items():
            P.write_json(tmp / "tofu" / f"{name}.json", rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m", help="base model (alter's model names)")
    ap.add_argument("--data", default="../shared/data", help="data root holding tofu/")
    ap.add_argument("--methods", default="alter,gd,npo", help="comma-separated (`alter methods`)")
    ap.add_argument(
        "--stages", default="forget01,forget05,forget10", help="any of " + ",".join(STAGES)
    )
    ap.add_argument(
        "--rows-per-author", type=int, default=4, help="QA rows kept per forget author (20 = all)"
    )
    ap.add_argument(
        "--retain-items", type=int, default=40, help="first items of retain_perturbed (trained on)"
    )
    ap.add_argument(
        "--utility-items",
        type=int,
        default=40,
        help="first real_authors / world_facts items evaluated (0 = all)",
    )
    ap.add_argument("--ft-epochs", type=float, default=5.0, help="fine-tuning passes")
    ap.add_argument("--epochs", type=float, default=5.0, help="unlearning passes (every method)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="generated answer tokens")
    ap.add_argument("--fluency", action="store_true", help="also the fluency of the generations")
    ap.add_argument(
        "--chained",
        action="store_true",
        help="start each stage from the previous stage's model (full-parameter methods only)",
    )
    P.add_variant_args(ap)
    ap.add_argument("--out", default="runs/sequential", help="output folder (resumed if present)")
    args = ap.parse_args(argv)
    args.overrides = P.variant_overrides(ap, args)
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        ap.error(f"unknown stage(s) {', '.join(bad) or '(none)'}; choose from {', '.join(STAGES)}")
    args.stage_list = sorted(set(stages), key=list(STAGES).index)
    args.method_list = [m for m in args.methods.split(",") if m]
    if args.chained:
        adapters = [m for m in args.method_list if m not in FULL_PARAMETER]
        if adapters:
            ap.error(
                f"--chained needs full-parameter methods ({', '.join(FULL_PARAMETER)}); "
                f"{', '.join(adapters)} produce adapters that cannot be merged into the next stage"
            )
    if not 1 <= args.rows_per_author <= ROWS_PER_AUTHOR:
        ap.error(f"--rows-per-author must be in 1..{ROWS_PER_AUTHOR}")
    if args.retain_items < 1 or args.utility_items < 0:
        ap.error("--retain-items must be >= 1 and --utility-items >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from alter.data.benchmarks import load_tofu
    from alter.data.schema import RowSet
    from alter.evals.runner import EvalOptions
    from alter.methods import check_method
    from alter.train import FinetuneConfig

    for m in args.method_list:
        check_method(m)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    P.check_protocol(out, {k: getattr(args, k) for k in PROTOCOL_KEYS})
    if args.variant:
        P.check_variant(out, args.variant, args.overrides)
    timings = P.Timings(out / "timings.json")
    mode = "chained" if args.chained else "independent"

    tofu_dir = Path(args.data) / "tofu"
    full, _, retain = P.tofu_retain(tofu_dir, args.retain_items, "sequential:retain")
    k = args.rows_per_author
    forget = {}
    for s, n in STAGES.items():
        # Each forget row names its author as its subdomain: one ALTER forget expert per author.
        rows = P.tofu_author_rows(full, range(N_AUTHORS - n, N_AUTHORS), k)
        forget[s] = RowSet(rows, source=f"sequential:{s}", kind="qa")
        evaluated = stage_rows(load_tofu(f"{s}_perturbed", tofu_dir).rows, s, k)
        assert [r["question"] for r in rows] == [r["question"] for r in evaluated], s
    write_eval_data(tofu_dir, out / "data", k, args.retain_items, args.utility_items or None)
    print(
        "sequential: forget rows "
        + ", ".join(f"{s} {len(forget[s])}" for s in STAGES)
        + f"; retain {len(retain)} rows; mode {mode}",
        flush=True,
    )

    ft = FinetuneConfig(epochs=args.ft_epochs, lr=5e-5, seed=0)
    train = RowSet([*retain, *forget["forget10"]], source="sequential:train", kind="qa")
    target = str(
        P.finetune_stage(args.model, train, ft, out / "target", timings, "finetune_target")
    )
    retain_model = str(
        P.finetune_stage(
            args.model, retain, ft, out / "retain_model", timings, "finetune_retain_model"
        )
    )

    results = []

    def evaluate(stage: str, tag: str, spec, label: str, reference) -> None:
        opts = EvalOptions(  # fluency under the target for every model (docs/RESULTS.md)
            forget_split=stage,
            max_new_tokens=args.max_new_tokens,
            fluency=args.fluency,
            original=target,
        )
        d = out / "evals" / tag / stage
        key = f"{tag}_{stage}".replace("/", "_")
        s = P.eval_stage(d, spec, "tofu", out / "data", reference, opts, timings, f"eval_{key}")
        wall = timings.get(f"unlearn_{key}")
        results.append({"stage": stage, "model": label, "summary": s, "unlearn_seconds": wall})

    for stage in args.stage_list:
        ref = out / "evals" / "retain_model" / stage
        evaluate(stage, "retain_model", (retain_model, None), "retain_model", None)
        evaluate(stage, "target", (target, None), "target", ref)
    previous: dict[str, str] = {}
    for m in args.method_list:
        name = f"{m}+{args.variant}" if args.variant else m
        for stage in args.stage_list:
            start = previous.get(m, target) if args.chained else target
            run = out / "runs" / mode / name / stage
            check_start(run, start)
            P.unlearn_stage(
                start,
                forget[stage],
                retain,
                run,
                m,
                {"epochs": args.epochs, "seed": 0, **args.overrides},
                timings,
                f"unlearn_{mode}_{name}_{stage}",
            )
            if args.chained:
                if not P.is_full_model(run):
                    raise SystemExit(f"error: {run} is not a full model; it cannot be chained")
                previous[m] = str(run)
            label = f"{name} (chained)" if args.chained else name
            evaluate(
                stage,
                f"{mode}/{name}",
                P.model_spec(run, start),
                label,
                out / "evals" / "retain_model" / stage,
            )

    order = {s: i for i, s in enumerate(args.stage_list)}
    results.sort(key=lambda r: order[r["stage"]])
    n_forget = {s: len(forget[s]) for s in STAGES}
    table = [
        [
            r["stage"],
            str(n_forget[r["stage"]]),
            r["model"],
            *(
                "ref"
                if r["model"] == "retain_model" and key == "forget_quality"
                else P.fmt(r["summary"].get(key), spec)
                for key, spec in COLUMNS
            ),
            P.fmt(r["unlearn_seconds"], ".0f") if r["unlearn_seconds"] else "-",
        ]
        for r in results
    ]
    header = ["stage", "forget rows", "model", *(key for key, _ in COLUMNS), "unlearn s"]
    text = P.markdown_table(header, table)
    P.write_text(out / "table.md", text)
    result = {
        "protocol": {key: getattr(args, key) for key in PROTOCOL_KEYS},
        "mode": mode,
        "stages": {
            s: {
                "authors": list(range(N_AUTHORS - STAGES[s], N_AUTHORS)),
                "forget_rows": n_forget[s],
            }
            for s in args.stage_list
        },
        "retain_rows": len(retain),
        "rows": [
            {
                "stage": r["stage"],
                "model": r["model"],
                **{key: r["summary"].get(key) for key, _ in COLUMNS},
                "unlearn_seconds": r["unlearn_seconds"],
            }
            for r in results
        ],
        "timings": timings.values,
    }
    P.write_json(out / "summary.json", result)
    print(text)
    return result


def check_start(run: Path, start: str) -> None:
    """A finished run is reused only if it started from the model this invocation would use."""
    from alter.runs import is_complete

    cfg = run / "resolved_config.json"
    if is_complete(run) and cfg.is_file():
        have = json.loads(cfg.read_text()).get("model")
        if Path(have).resolve() != Path(start).resolve():
            raise SystemExit(
                f"error: {run} was unlearned from {have}, this run starts it from {start} "
                "(other --stages with --chained?); remove it or use another --out"
            )


if __name__ == "__main__":
    main()

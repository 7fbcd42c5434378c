"""Where ALTER's forgetting (or utility) is lost: the router, the experts or B_r.

    python bench/alter_routing.py --tofu-mini runs/tofu-mini --run runs/tofu-mini/runs/alter
    python bench/alter_routing.py --sequential runs/sequential --stage forget10 [--generate]

With ``--tofu-mini``: the 40 forget rows of tofu-mini (forget01) and the first ``--rows``
retain rows, ALTER's run given by ``--run``. With ``--sequential``: a bench/sequential.py
directory's evaluated rows of ``--stage`` (forget rows, retain rows, real_authors, world_facts),
ALTER's run ``OUT/runs/independent/alter/STAGE`` on ``OUT/target`` (or ``--run``, e.g. a
variant's ``OUT/runs/independent/alter+NAME/STAGE``).

For every set of rows it prints the answer probability (exp of the mean answer-token NLL,
pooled):

* ``target``: adapters off (the model before unlearning);
* ``routed``: ALTER as evaluated (the router's routing);
* ``B_r only``: no forget expert on any token (what the shared A and the retention B do);

and the router's decisions: the mean forget-expert weight on low- and high-entropy tokens and
the share of low-entropy tokens routed to a forget expert (weight > 0.5). For the forget rows
it also prints **oracle routing** per subdomain (each forget row through its own expert only,
weight 1 on every token): what the experts learnt. If oracle routing forgets far more than the
router's routing, the router is what limits forgetting (docs/ALTER.md, "Router fit"); if
``routed`` loses utility on rows unlike the forget set that ``B_r only`` keeps, the router
sends them to forget experts. ``--generate`` adds the greedy answers' ROUGE-L recall (TOFU's
utility term) for the three variants on the non-forget sets.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--tofu-mini", help="a bench/tofu_mini.py directory (with --run)")
    where.add_argument("--sequential", help="a bench/sequential.py directory (with --stage)")
    ap.add_argument("--run", help="an ALTER run directory on the target (needed with --tofu-mini)")
    ap.add_argument("--stage", default="forget10", help="sequential stage (default forget10)")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--rows", type=int, default=40, help="rows checked per non-forget set")
    ap.add_argument("--generate", action="store_true", help="ROUGE-L of greedy answers too")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    if args.tofu_mini and not args.run:
        ap.error("--tofu-mini needs --run")
    return args


def row_sets(args) -> tuple[Path, Path, dict[str, list[dict]]]:
    """(target, run, {name: rows}) with the forget rows first, in training order."""
    if args.tofu_mini:
        full, _, retain = P.tofu_retain(Path(args.data) / "tofu", 160, "routing:retain")
        forget = P.tofu_author_rows(full, P.FORGET01_AUTHORS, subdomain=False)
        return (
            Path(args.tofu_mini) / "target",
            Path(args.run),
            {"forget": forget, "retain": list(retain)[: args.rows]},
        )
    out = Path(args.sequential)
    tofu = out / "data" / "tofu"
    sets = {"forget": f"{args.stage}_perturbed", "retain": "retain_perturbed"}
    sets |= {"real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed"}
    rows = {}
    for name, split in sets.items():
        path = tofu / f"{split}.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (is {out} a bench/sequential.py run?)")
        data = json.loads(path.read_text())
        rows[name] = data if name == "forget" else data[: args.rows]
    run = Path(args.run) if args.run else out / "runs" / "independent" / "alter" / args.stage
    return out / "target", run, rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    target, run, sets = row_sets(args)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"error: {run} is not a finished ALTER run (no summary.json)")
    labels = json.loads(summary_path.read_text())["forget_labels"]
    if len(labels) != len(sets["forget"]):
        raise SystemExit(f"error: {len(labels)} forget labels, {len(sets['forget'])} forget rows")

    import torch

    from alter.adapters.layer import Route
    from alter.api import load
    from alter.evals.qa import answer_nll, generate_answers, rouge_l_recall

    am, tok = load(str(target), str(run))
    routed = am.route_from_prepass

    def prob(rows) -> float:
        r = answer_nll(am, tok, rows, batch_size=8)
        return math.exp(-sum(s for s, _ in r) / sum(n for _, n in r))

    def rouge(rows) -> float:
        gens = generate_answers(
            am, tok, [r["question"] for r in rows], max_new_tokens=args.max_new_tokens
        )
        return sum(rouge_l_recall(gens, [r["answer"] for r in rows])) / len(rows)

    def no_expert(_pre):
        return Route(expert_weights=None)

    def variants(measure, rows) -> str:
        with am.adapters_disabled():
            base = measure(rows)
        am.route_from_prepass = routed
        with_router = measure(rows)
        am.route_from_prepass = no_expert
        retain_only = measure(rows)
        am.route_from_prepass = routed
        return f"target {base:.4f}, routed {with_router:.4f}, B_r only {retain_only:.4f}"

    seen = []

    def recording(pre):
        route = routed(pre)
        seen.append((route.expert_weights.sum(-1).flatten(), pre.entropy.flatten()))
        return route

    for name, rows in sets.items():
        print(f"{name} ({len(rows)} rows) answer prob: {variants(prob, rows)}", flush=True)
        if args.generate and name != "forget":
            print(f"{name} ROUGE-L recall: {variants(rouge, rows)}", flush=True)
        seen.clear()
        am.route_from_prepass = recording
        answer_nll(am, tok, rows, batch_size=8)
        am.route_from_prepass = routed
        weight = torch.cat([w for w, _ in seen])
        low = torch.cat([e for _, e in seen]) <= am.threshold
        print(
            f"{name} tokens: mean forget-expert weight low-entropy {weight[low].mean():.3f} "
            f"(n={int(low.sum())}), high-entropy {weight[~low].mean():.3f}; low-entropy tokens "
            f"routed to a forget expert: {(weight[low] > 0.5).float().mean():.3f}",
            flush=True,
        )
    forget = sets["forget"]
    for d in range(am.router.n_experts):
        rows = [r for r, lab in zip(forget, labels, strict=True) if lab == d]
        am.route_from_prepass = lambda _pre, d=d: Route(oracle_expert=d)
        print(f"oracle expert {d} on its {len(rows)} forget rows: {prob(rows):.4f}", flush=True)
    am.route_from_prepass = routed


if __name__ == "__main__":
    main()

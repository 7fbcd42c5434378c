"""Where ALTER's forgetting is lost: the router or the experts (on a tofu-mini ALTER run).

    python bench/alter_routing.py --tofu-mini runs/tofu-mini --run runs/tofu-mini/runs/alter

Prints, for the 40 forget rows of tofu-mini (forget01) and the first 40 retain rows:

* the answer probability (exp of the mean answer-token NLL, pooled) with the router's routing;
* the same with **oracle routing** (each forget row through its own subdomain's expert only,
  weight 1 on every token): what the experts learnt;
* the same with no forget expert at all (``B_r`` only);
* the router's decisions: mean forget-expert weight on low- and high-entropy tokens, and the
  share of low-entropy tokens routed to a forget expert (weight > 0.5).

If oracle routing forgets far more than the router's routing, the router is what limits
forgetting (docs/ALTER.md, "Router fit").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tofu-mini", required=True, help="a bench/tofu_mini.py directory")
    ap.add_argument("--run", required=True, help="an ALTER run directory on its target")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--rows", type=int, default=40, help="retain rows checked")
    args = ap.parse_args()

    import torch

    from alter.adapters.layer import Route
    from alter.api import load
    from alter.evals.qa import answer_nll

    run = Path(args.run)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"error: {run} is not a finished ALTER run (no summary.json)")
    labels = json.loads(summary_path.read_text())["forget_labels"]
    am, tok = load(str(Path(args.tofu_mini) / "target"), str(run))
    full, _, retain = P.tofu_retain(Path(args.data) / "tofu", 160, "routing:retain")
    forget = P.tofu_author_rows(full, P.FORGET01_AUTHORS, subdomain=False)
    retain = list(retain)[: args.rows]

    def prob(rows) -> float:
        r = answer_nll(am, tok, rows, batch_size=8)
        return math.exp(-sum(s for s, _ in r) / sum(n for _, n in r))

    routed = am.route_from_prepass
    print(f"router's routing: forget {prob(forget):.4f}, retain {prob(retain):.4f}")
    for d in range(am.router.n_experts):
        rows = [r for r, lab in zip(forget, labels, strict=True) if lab == d]
        am.route_from_prepass = lambda _pre, d=d: Route(oracle_expert=d)
        print(f"oracle expert {d} on its {len(rows)} forget rows: {prob(rows):.4f}")
    am.route_from_prepass = lambda _pre: Route(expert_weights=None)
    print(f"no forget expert (B_r only): forget {prob(forget):.4f}")

    seen = []

    def recording(pre):
        route = routed(pre)
        seen.append((route.expert_weights.sum(-1).flatten(), pre.entropy.flatten()))
        return route

    am.route_from_prepass = recording
    for name, rows in (("forget", forget), ("retain", retain)):
        seen.clear()
        answer_nll(am, tok, rows, batch_size=8)
        weight = torch.cat([w for w, _ in seen])
        low = torch.cat([e for _, e in seen]) <= am.threshold
        print(
            f"{name} tokens: mean forget-expert weight low-entropy {weight[low].mean():.3f} "
            f"(n={int(low.sum())}), high-entropy {weight[~low].mean():.3f}; low-entropy tokens "
            f"routed to a forget expert: {(weight[low] > 0.5).float().mean():.3f}"
        )
    am.route_from_prepass = routed


if __name__ == "__main__":
    main()

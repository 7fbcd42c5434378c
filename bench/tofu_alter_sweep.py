"""ALTER variants on tofu-mini: which of ALTER's choices limit its forgetting at this scale.

    python bench/tofu_alter_sweep.py --tofu-mini runs/tofu-mini \
        [--variants "authors;authors,lr_B=3e-3;authors,threshold_mode=adaptive"] [--generate]

Needs a finished ``bench/tofu_mini.py`` directory (its target, retain model and the retain
model's evaluation, the reference of forget quality). Each variant is ``;``-separated: a list of
``key=value`` ALTER overrides, optionally starting with ``authors`` (every forget row carries its
TOFU author as ``subdomain``, so ALTER trains one expert per author instead of k-means clusters).
``kmeans`` alone is the spec default, as tofu_mini.py ran it. Every variant unlearns with the
tofu-mini budget (``--epochs`` passes of 4 + 4 rows) and is evaluated with `alter eval
--benchmark tofu` on the same rows; likelihoods only unless ``--generate`` (forget quality and
the probabilities need no generation; model utility is then the harmonic mean of its six
non-ROUGE terms, "utility (no ROUGE)", not comparable with tofu_mini's model utility). Resumable; writes OUT/sweep.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402


def parse_variant(text: str) -> tuple[bool, dict]:
    authors, overrides = False, {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "authors":
            authors = True
        elif part == "kmeans":
            continue
        elif "=" in part:
            from alter.api import parse_set_value

            key, value = part.split("=", 1)
            overrides[key] = parse_set_value(value)  # as `alter unlearn --set` reads it
        else:
            raise SystemExit(
                f"error: variant part {part!r} is not 'authors', 'kmeans' or key=value"
            )
    return authors, overrides


def variant_name(text: str) -> str:
    return text.replace(",", "+").replace("=", "")


def utility_no_rouge(s: dict) -> float | None:
    """Harmonic mean of TOFU's model-utility terms without ROUGE: retain prob and truth ratio,
    real authors' and world facts' normalised prob and truth ratio."""
    keys = (
        "retain_Q_A_Prob",
        "retain_Truth_Ratio",
        "ra_Q_A_Prob_normalised",
        "ra_Truth_Ratio",
        "wf_Q_A_Prob_normalised",
        "wf_Truth_Ratio",
    )
    values = [s.get(k) for k in keys]
    if any(not isinstance(v, float) or v <= 0 for v in values):
        return None
    return len(values) / sum(1 / v for v in values)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tofu-mini", required=True, help="a finished bench/tofu_mini.py directory")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument(
        "--variants",
        default="kmeans;authors;authors,lr_B=3e-3;authors,threshold_mode=adaptive",
    )
    ap.add_argument("--retain-items", type=int, default=160)
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default=None, help="default: TOFU_MINI/alter-sweep")
    args = ap.parse_args(argv)

    from alter.data.schema import RowSet
    from alter.evals.runner import EvalOptions, run_eval
    from alter.pipeline import unlearn_and_save
    from alter.runs import is_complete

    base = Path(args.tofu_mini)
    reference = base / "evals" / "retain_model"
    target = base / "target"
    if not (is_complete(target) and is_complete(reference)):
        raise SystemExit(f"error: {base} has no finished target and retain-model evaluation")
    out = Path(args.out) if args.out else base / "alter-sweep"
    out.mkdir(parents=True, exist_ok=True)
    full, _, retain = P.tofu_retain(Path(args.data) / "tofu", args.retain_items, "sweep:retain")
    variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    parsed = {variant_name(v): parse_variant(v) for v in variants}
    opts = EvalOptions(
        forget_split="forget01",
        max_new_tokens=args.max_new_tokens,
        generate=args.generate,
        fluency=args.generate,
        original=str(target),
    )
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    rows = []
    for name, (authors, overrides) in parsed.items():
        forget = RowSet(
            P.tofu_author_rows(full, P.FORGET01_AUTHORS, subdomain=authors),
            source="sweep:forget01",
            kind="qa",
        )
        run = out / "runs" / name
        if not is_complete(run):
            t0 = time.perf_counter()
            unlearn_and_save(
                str(target),
                forget,
                retain,
                out=run,
                method="alter",
                overrides={"epochs": args.epochs, "seed": 0, **overrides},
                overwrite=True,
            )
            timings[f"unlearn_{name}"] = time.perf_counter() - t0
            P.write_json(timings_path, timings)
        ev = out / "evals" / name
        if not is_complete(ev):
            t0 = time.perf_counter()
            run_eval(
                str(target),
                str(run),
                "tofu",
                args.data,
                ev,
                reference,
                args.retain_items,
                options=opts,
                overwrite=True,
            )
            timings[f"eval_{name}"] = time.perf_counter() - t0
            P.write_json(timings_path, timings)
        s = json.loads((ev / "TOFU_SUMMARY.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        rows.append(
            [
                name,
                P.fmt(s.get("forget_quality"), ".3g"),
                P.fmt(s.get("model_utility") if args.generate else utility_no_rouge(s)),
                P.fmt(s.get("forget_Q_A_Prob")),
                P.fmt(s.get("forget_truth_ratio")),
                P.fmt(s.get("retain_Q_A_Prob")),
                P.fmt(s.get("retain_Truth_Ratio")),
                str(len(summary.get("subdomains", [])) or summary.get("n_subdomains", "")),
                P.fmt(timings.get(f"unlearn_{name}"), ".0f"),
            ]
        )
    header = [
        "variant",
        "forget quality",
        "model utility" if args.generate else "utility (no ROUGE)",
        "forget prob",
        "forget truth ratio",
        "retain prob",
        "retain truth ratio",
        "experts",
        "unlearn s",
    ]
    table = P.markdown_table(header, rows)
    P.write_text(out / "sweep.md", table)
    print(table)


if __name__ == "__main__":
    main()

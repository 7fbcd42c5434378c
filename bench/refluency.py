"""Fluency perplexity of finished TOFU and MUSE evaluations' generations under one model.

    python bench/refluency.py --model runs/tofu-mini/target runs/tofu-mini/evals/* \\
        [--out runs/tofu-mini/fluency_under_target.json]

`alter eval` without ``--original`` scores the greedy answers under the target (the adapter
switched off) for an adapter, but under the evaluated model itself for a full model, so the
fluency columns of two such evaluations are not comparable. This re-scores the stored
generations (``forget_Q_A_ROUGE`` / ``retain_Q_A_ROUGE`` of each TOFU_EVAL.json: question and
generation) under ``--model``, the same way the evaluation does (its prompt format and
continuation, `alter.evals.fluency`); nothing is generated again and the evaluations are not
modified. An evaluation whose stored perplexity was already under ``--model`` is reproduced.

A MUSE evaluation (MUSE_EVAL.json) is re-scored on its VerbMem continuations
(``forget_verbmem_ROUGE``: the raw-text prompt and the greedy continuation, special tokens as the
evaluation adds them). Its KnowMem prompts (few-shot) are not stored, so that split is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402

SPLITS = ("forget", "retain")


class Stored(NamedTuple):
    contexts: list[str]  # TOFU: the questions (chat-formatted when scored); MUSE: raw prompts
    generations: list[str]
    entry: dict  # the stored fluency entry (agg_value, model)
    muse: bool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "evals", nargs="+", type=Path, help="finished TOFU or MUSE evaluation directories"
    )
    ap.add_argument("--model", required=True, help="the model every perplexity is under")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return ap.parse_args(argv)


def stored_generations(eval_dir: Path) -> dict[str, Stored]:
    """``{split: Stored}`` of one TOFU_EVAL.json (forget, retain) or MUSE_EVAL.json
    (forget_verbmem)."""
    tofu, muse = eval_dir / "TOFU_EVAL.json", eval_dir / "MUSE_EVAL.json"
    path = tofu if tofu.is_file() else muse
    if not path.is_file():
        raise SystemExit(f"error: {eval_dir} has no TOFU_EVAL.json or MUSE_EVAL.json")
    ev = json.loads(path.read_text())
    is_muse = path == muse
    out = {}
    for split in ("forget_verbmem",) if is_muse else SPLITS:
        rouge = ev.get(f"{split}_ROUGE" if is_muse else f"{split}_Q_A_ROUGE")
        if not rouge:
            continue
        items = [rouge["value_by_index"][k] for k in sorted(rouge["value_by_index"], key=int)]
        out[split] = Stored(
            [it["input"] for it in items],
            [it.get("generation") or "" for it in items],
            ev.get(f"{split}_fluency_ppl", {}),
            is_muse,
        )
    if not out:
        raise SystemExit(f"error: {path} holds no generations (evaluated without generation?)")
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    evals = {d: stored_generations(d) for d in args.evals}  # every input checked first

    from alter.data.collate import format_prompt
    from alter.evals import fluency as flu
    from alter.evals.muse import model_max_length
    from alter.evals.runner import _continuation
    from alter.models import load_model

    model, tok = load_model(args.model)
    model.eval()
    results: dict[str, dict] = {}
    rows = []
    for d, splits in evals.items():
        res = results[str(d)] = {}
        for split, st in splits.items():
            if st.muse:
                contexts, gens = st.contexts, st.generations
            else:
                contexts = [format_prompt(tok, q) for q in st.contexts]
                gens = [_continuation(tok, g) for g in st.generations]
            items = flu.evaluate_fluency(
                gens,
                model=model,
                tokenizer=tok,
                contexts=contexts,
                batch_size=args.batch_size,
                max_length=model_max_length(model),
                add_special_tokens=st.muse,
            )
            ppl = flu.fluency_summary(items)["ppl"]
            res[split] = {
                "ppl": ppl,
                "stored_ppl": st.entry.get("agg_value"),
                "stored_under": st.entry.get("model"),
            }
            rows.append(
                [d.name, split, P.fmt(st.entry.get("agg_value"), ".2f"), str(st.entry.get("model"))]
                + [P.fmt(ppl, ".2f")]
            )
    header = ["evaluation", "split", "stored ppl", "stored under", f"ppl under {args.model}"]
    print(P.markdown_table(header, rows))
    if args.out:
        P.write_json(args.out, {"model": args.model, "evals": results})
    return results


if __name__ == "__main__":
    main()

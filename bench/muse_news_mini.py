"""muse-news-mini: the MUSE-News protocol at CPU scale, on the real MUSE-News files.

    python bench/muse_news_mini.py [--data ../shared/data] [--methods alter,gd,npo] \\
        [--forget-items 16] [--text-chars 512] [--out runs/muse-news-mini]

Full size, for a GPU:

    python bench/muse_news_mini.py --forget-items 100 --text-chars 0 --out runs/muse-news-full

(whole VerbMem prompts, PrivLeak chunks and KnowMem source articles, split into ~1000-character
training pieces; 100 VerbMem and PrivLeak items, the 43 / 15 located KnowMem items).

What the target knows. MUSE's target model was trained on the whole BBC corpus; the local
snapshot (../shared/data/muse/news, MANIFEST.txt) has raw/forget but not raw/retain1,
raw/retain2 or raw/holdout. So the target here is ``--model`` fine-tuned on the text each
evaluated item comes from, traced item by item, plus retain text; the retain model (the
reference of PrivLeak, MUSE's "retrain" model) on the retain text only:

* VerbMem: each item (prompt, gt) is a span of raw/forget, cut by MUSE at token boundaries:
  for all 100 items the prompt's end and the gt's start follow each other in the articles
  joined by blank lines (MUSE's gt lost the joining space in about half of them; the trained
  text keeps it). The first ``--forget-items`` items are kept, the prompt cut to its last
  ``--text-chars / 2`` characters and gt to its first ``--text-chars``; the target is trained
  on that raw span, the evaluation prompts with the same cut prompt.
* KnowMem forget: MUSE generated the QA from raw/forget articles but does not record which. An
  item's source is the place where its answer occurs verbatim with at least half of the
  question's content words within 256 characters around it (43 of the 100 items are located;
  the others are dropped). The first ``--forget-items`` located items are kept; the target is
  trained on ``--text-chars`` characters around each answer (the whole article with 0).
* KnowMem retain: the QA come from raw/retain2, which is not in the snapshot; the only retain2
  text there is privleak/retain2 (100 chunks of raw/retain2), where 15 of the 100 items are
  located by the same rule. Those windows (``--retain-items`` of them, default all) are the
  retain text, padded with the heads of the other retain2 chunks up to as many texts as the
  forget side has.
* PrivLeak: privleak/forget chunks are verbatim chunks of raw/forget (members, trained on),
  privleak/holdout chunks never seen by either model; the first ``--forget-items`` of each, cut
  to ``--text-chars``. PrivLeak compares each model's Min-K% AUC with the retain model's.

The evaluated items are written to OUT/data/muse/news (read by `alter eval --benchmark muse`),
their sources to OUT/selection.json. Every method then unlearns the forget texts with the same
budget (``--epochs`` passes, batches of 4 + 4, the method's default lr) and is evaluated with
VerbMem, KnowMem forget / retain, PrivLeak and the fluency of its VerbMem and KnowMem
generations. Resumable: finished stages are skipped. Writes OUT/table.md and OUT/summary.json
(the rows of the methods this invocation was given, and the references).

``--set KEY=VALUE`` (repeatable) with ``--variant NAME`` runs the listed methods with other
options (as ``alter unlearn --set``) next to their default runs, named ``METHOD+NAME``, e.g.
``--methods alter --set gamma=0 --set retain_kl=1 --variant kl``; a name keeps its options
(OUT/variants.json).

Run time of the default command on 2 CPU cores with SmolLM2-135M, estimated from ~110 training
tokens/s (a step on 4 x 128 tokens takes ~4.7 s) and ~800 scored tokens/s: 48 forget texts
(6.5k tokens) + 48 retain texts (5.8k tokens); fine-tuning the target and the retain model for
5 epochs ~16 min; unlearning, 60 steps of 4 + 4 texts each, GD ~10 min, NPO ~10 min, ALTER
~5 min; five evaluations (16 VerbMem prompts x 128 new tokens, 31 few-shot KnowMem prompts of
~350 tokens, 32 PrivLeak texts, fluency) ~6 min: about 45-50 min in all.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocol as P  # noqa: E402

# An item's source must hold its answer with half the question's content words around it.
MATCH_CHARS = 512
MATCH_THRESHOLD = 0.5
# Longer training texts (full size) are split into pieces that fit 256 tokens.
PIECE_CHARS = 1000
# Words too common to tie a question to a passage (words under 3 letters never count).
STOPWORDS = frozenset(
    "the and for with from are was were been has have had what which who whom whose how many "  # noqa: SIM905
    "much when where why did does according this that these those its after before during about "
    "into than said say says mrs".split()
)
# Arguments that decide the cached models and evaluations; a rerun into OUT must keep them.
PROTOCOL_KEYS = (
    "model",
    "data",
    "forget_items",
    "retain_items",
    "text_chars",
    "ft_epochs",
    "epochs",
    "max_new_tokens",
    "no_fluency",
)


# ------------------------------------------------------------------------------ the texts


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2} - STOPWORDS


def head(text: str, n: int) -> str:
    """The first ``n`` characters of ``text`` cut at a word end (all of it when ``n`` is 0)."""
    if n <= 0 or len(text) <= n:
        return text
    cut = text.rfind(" ", n // 2, n + 1)
    return text[: cut if cut > 0 else n].rstrip()


def tail(text: str, n: int) -> str:
    """The last ``n`` characters of ``text`` from a word start (its end kept exactly)."""
    if n <= 0 or len(text) <= n:
        return text
    start = len(text) - n
    cut = text.find(" ", start, start + n // 2)
    return text[cut + 1 if cut >= 0 else start :]


def locate(question: str, answer: str, docs: list[str]) -> tuple[float, int, int] | None:
    """``(score, doc, position)`` of the best occurrence of ``answer`` in ``docs``: score is the
    share of the question's content words within ``MATCH_CHARS / 2`` characters around it."""
    words = content_words(question)
    needle = answer.strip().lower()
    if not words or not needle:
        return None
    best = None
    for d, doc in enumerate(docs):
        low = doc.lower()
        pos = low.find(needle)
        while pos >= 0:
            lo = max(0, pos - MATCH_CHARS // 2)
            near = content_words(doc[lo : pos + len(needle) + MATCH_CHARS // 2])
            score = len(words & near) / len(words)
            if best is None or score > best[0]:
                best = (score, d, pos)
            pos = low.find(needle, pos + 1)
    return best


def window(doc: str, pos: int, length: int, n: int) -> tuple[int, int]:
    """``[start, end)`` of ``n`` characters centred on ``doc[pos:pos + length]``, word-aligned
    (the whole document when ``n`` is 0)."""
    if n <= 0 or len(doc) <= n:
        return 0, len(doc)
    start = min(max(0, pos + length // 2 - n // 2), len(doc) - n)
    end = start + n
    if start > 0:
        sp = doc.find(" ", start, pos)
        start = sp + 1 if sp >= 0 else start
    sp = doc.rfind(" ", pos + length, end)
    return start, sp if sp >= 0 else end


def pieces(text: str, max_chars: int = PIECE_CHARS) -> list[str]:
    """``text`` split at spaces into pieces of at most about ``max_chars`` characters."""
    out = []
    while len(text) > max_chars:
        cut = text.rfind(" ", max_chars // 2, max_chars)
        cut = cut if cut > 0 else max_chars
        out.append(text[:cut])
        text = text[cut:].lstrip()
    return [*out, text] if text.strip() else out


def select_qa(qa: list[dict], docs: list[str], n: int | None, chars: int) -> tuple[list, list]:
    """The first ``n`` located QA items and their source texts (one per distinct window)."""
    items, spans = [], []  # spans: (doc, start, end)
    for i, row in enumerate(qa):
        if n is not None and len(items) >= n:
            break
        hit = locate(row["question"], row["answer"], docs)
        if hit is None or hit[0] < MATCH_THRESHOLD:
            continue
        score, d, pos = hit
        shared = [k for k, (sd, s, e) in enumerate(spans) if sd == d and s <= pos < e]
        if shared:
            k = shared[0]
        else:
            spans.append((d, *window(docs[d], pos, len(row["answer"]), chars)))
            k = len(spans) - 1
        items.append(
            {
                "question": row["question"],
                "answer": row["answer"],
                "source": {"index": i, "doc": d, "position": pos, "score": score, "text": k},
            }
        )
    return items, [docs[d][s:e] for d, s, e in spans]


class Joined:
    """raw/forget's articles joined by blank lines, the text MUSE cut its VerbMem and PrivLeak
    spans from; ``docs(a, b)`` are the articles (0-based rows of raw/forget.json) under
    ``text[a:b]``."""

    def __init__(self, docs: list[str]) -> None:
        self.text = "\n\n".join(docs)
        self.starts = list(itertools.accumulate((len(d) + 2 for d in docs[:-1]), initial=0))

    def docs(self, a: int, b: int) -> list[int]:
        return list(
            range(bisect.bisect_right(self.starts, a) - 1, bisect.bisect_right(self.starts, b - 1))
        )


def verbmem_item(row: dict, raw: Joined, chars: int) -> dict:
    """A VerbMem item cut to ``chars`` and the raw text it was cut from (MUSE's gt lost the space
    that joined it to the prompt in about half the items; the trained text keeps it)."""
    prompt, gt = tail(row["prompt"], chars // 2), head(row["gt"], chars)
    probe = row["prompt"][-300:]
    end = raw.text.find(probe)
    if end < 0:  # not a verbatim span: train on prompt + gt as MUSE gives them
        return {"prompt": prompt, "gt": gt, "text": prompt + gt, "docs": None}
    end += len(probe)
    gap = ""
    if not raw.text.startswith(row["gt"][:80], end) and raw.text.startswith(
        row["gt"][:80], end + 1
    ):
        gap = raw.text[end]
    docs = raw.docs(end - len(prompt), end + len(gap) + len(gt))
    return {"prompt": prompt, "gt": gt, "text": prompt + gap + gt, "docs": docs}


def build(data: Path, n: int, n_retain: int | None, chars: int) -> dict:
    """The evaluated MUSE-News items and the forget / retain training texts (see the docstring)."""
    from alter.data.benchmarks import load_muse_news
    from alter.data.schema import read_file

    def load(subset: str, split: str) -> list:
        return load_muse_news(subset, split, data_dir=data).rows

    raw_docs = read_file(data / "raw" / "forget.json")  # every row, so indices are the file's
    raw = Joined(raw_docs)
    verbmem = [
        {**verbmem_item(r, raw, chars), "index": i}
        for i, r in enumerate(load("verbmem", "forget")[:n])
    ]
    kf, kf_texts = select_qa(load("knowmem", "forget_qa"), raw_docs, n, chars)
    retain_docs = [r["text"] for r in load("privleak", "retain")]
    kr, kr_texts = select_qa(load("knowmem", "retain_qa"), retain_docs, n_retain, chars)
    privleak = {
        split: [head(r["text"], chars) for r in load("privleak", split)[:n]]
        for split in ("forget", "holdout")
    }
    privleak_docs = []
    for t in privleak["forget"]:
        a = raw.text.find(t)
        privleak_docs.append(raw.docs(a, a + len(t)) if a >= 0 else None)
    forget_texts = [v["text"] for v in verbmem] + privleak["forget"] + kf_texts
    used = {it["source"]["doc"] for it in kr}
    fill = [head(t, chars) for d, t in enumerate(retain_docs) if d not in used]
    retain_texts = kr_texts + fill[: max(0, len(forget_texts) - len(kr_texts))]
    return {
        "verbmem": verbmem,
        "knowmem_forget": kf,
        "knowmem_retain": kr,
        "icl": {s: load("knowmem", f"{s}_qa_icl") for s in ("forget", "retain")},
        "privleak": privleak,
        "privleak_docs": privleak_docs,
        "forget_texts": forget_texts,
        "retain_texts": retain_texts,
    }


def write_eval_data(sel: dict, root: Path) -> None:
    """The evaluated items as a MUSE-News data folder (``root/muse/news``), written atomically."""
    from alter.runs import atomic_dir, is_complete

    if is_complete(root):
        return
    with atomic_dir(root, overwrite=True, meta={"what": "muse-news-mini evaluated items"}) as tmp:
        news = tmp / "muse" / "news"
        for sub in ("verbmem", "knowmem", "privleak"):
            (news / sub).mkdir(parents=True)

        def qa(rows):
            return [{"question": r["question"], "answer": r["answer"]} for r in rows]

        P.write_json(
            news / "verbmem" / "forget.json",
            [{"prompt": r["prompt"], "gt": r["gt"]} for r in sel["verbmem"]],
        )
        for side in ("forget", "retain"):
            P.write_json(news / "knowmem" / f"{side}_qa.json", qa(sel[f"knowmem_{side}"]))
            P.write_json(news / "knowmem" / f"{side}_qa_icl.json", qa(sel["icl"][side]))
        for split, texts in sel["privleak"].items():
            P.write_json(news / "privleak" / f"{split}.json", texts)


def selection_record(sel: dict) -> dict:
    return {
        "counts": {
            "verbmem": len(sel["verbmem"]),
            "knowmem_forget": len(sel["knowmem_forget"]),
            "knowmem_retain": len(sel["knowmem_retain"]),
            "privleak_forget": len(sel["privleak"]["forget"]),
            "privleak_holdout": len(sel["privleak"]["holdout"]),
            "forget_texts": len(sel["forget_texts"]),
            "retain_texts": len(sel["retain_texts"]),
        },
        "sources": {
            "verbmem": "verbmem/forget index -> raw/forget rows its (cut) span covers",
            "knowmem_forget": "knowmem/forget_qa index -> raw/forget doc",
            "knowmem_retain": "knowmem/retain_qa index -> privleak/retain doc",
            "privleak_forget": "privleak/forget index -> raw/forget rows its (cut) text covers",
            "privleak_holdout": "the first N of privleak/holdout (never trained on)",
        },
        "verbmem": [{"index": v["index"], "raw_forget_docs": v["docs"]} for v in sel["verbmem"]],
        "privleak_forget": [
            {"index": i, "raw_forget_docs": d} for i, d in enumerate(sel["privleak_docs"])
        ],
        "knowmem_forget": [it["source"] for it in sel["knowmem_forget"]],
        "knowmem_retain": [it["source"] for it in sel["knowmem_retain"]],
    }


# ------------------------------------------------------------------------------ the protocol


COLUMNS = (
    ("forget_verbmem_ROUGE", "VerbMem forget", ".3f"),
    ("forget_knowmem_ROUGE", "KnowMem forget", ".3f"),
    ("retain_knowmem_ROUGE", "KnowMem retain", ".3f"),
    ("privleak", "PrivLeak %", ".1f"),
    ("mia_min_k", "Min-K% AUC", ".3f"),
    ("forget_verbmem_fluency_ppl", "VerbMem gen. ppl", ".1f"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m", help="base model (alter's model names)")
    ap.add_argument("--data", default="../shared/data", help="data root holding muse/news")
    ap.add_argument("--methods", default="alter,gd,npo", help="comma-separated (`alter methods`)")
    ap.add_argument(
        "--forget-items",
        type=int,
        default=16,
        help="VerbMem, KnowMem forget and PrivLeak forget / holdout items (each)",
    )
    ap.add_argument(
        "--retain-items", type=int, default=None, help="KnowMem retain items (default: all located)"
    )
    ap.add_argument(
        "--text-chars",
        type=int,
        default=512,
        help="characters per text (~120 SmolLM2 tokens); 0 keeps MUSE's whole texts",
    )
    ap.add_argument("--ft-epochs", type=float, default=5.0, help="fine-tuning passes")
    ap.add_argument("--epochs", type=float, default=5.0, help="unlearning passes (every method)")
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="cap every generation (default: MUSE's VerbMem 128 / KnowMem 32)",
    )
    ap.add_argument("--no-fluency", action="store_true", help="skip the fluency of generations")
    P.add_variant_args(ap)
    ap.add_argument(
        "--out", default="runs/muse-news-mini", help="output folder (resumed if present)"
    )
    args = ap.parse_args(argv)
    args.overrides = P.variant_overrides(ap, args)
    for name in ("forget_items", "retain_items"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.text_chars < 0 or 0 < args.text_chars < 16:
        ap.error("--text-chars must be 0 (whole texts) or >= 16")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from alter.data.schema import RowSet
    from alter.evals.runner import EvalOptions
    from alter.methods import check_method
    from alter.train import FinetuneConfig

    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        check_method(m)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    P.check_protocol(out, {k: getattr(args, k) for k in PROTOCOL_KEYS})
    if args.variant:
        P.check_variant(out, args.variant, args.overrides)
    timings = P.Timings(out / "timings.json")

    sel = build(
        Path(args.data) / "muse" / "news", args.forget_items, args.retain_items, args.text_chars
    )
    counts = selection_record(sel)["counts"]
    print("muse-news-mini: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    if not sel["knowmem_forget"] or not sel["knowmem_retain"]:
        raise SystemExit("error: no KnowMem item could be traced to its source text")
    P.write_json(out / "selection.json", selection_record(sel))
    write_eval_data(sel, out / "data")

    def rows(texts: list[str], name: str) -> RowSet:
        return RowSet(
            [{"text": p} for t in texts for p in pieces(t)],
            source=f"muse-news-mini:{name}",
            kind="text",
        )

    forget, retain = rows(sel["forget_texts"], "forget"), rows(sel["retain_texts"], "retain")
    ft = FinetuneConfig(epochs=args.ft_epochs, lr=5e-5, seed=0)
    target = P.finetune_stage(
        args.model,
        RowSet([*forget, *retain], source="muse-news-mini:train", kind="text"),
        ft,
        out / "target",
        timings,
        "finetune_target",
    )
    retain_model = P.finetune_stage(
        args.model, retain, ft, out / "retain_model", timings, "finetune_retain_model"
    )

    # every model's continuations are scored for fluency under the target (docs/RESULTS.md)
    opts = EvalOptions(
        max_new_tokens=args.max_new_tokens, fluency=not args.no_fluency, original=str(target)
    )
    data = out / "data"
    summaries = {
        "retain_model": P.eval_stage(
            out / "evals" / "retain_model",
            (str(retain_model), None),
            "muse",
            data,
            None,
            opts,
            timings,
            "eval_retain_model",
        )
    }
    ref = summaries["retain_model"].get("mia_min_k")
    reference = ref if isinstance(ref, float) and 0.0 < ref < 1.0 else None
    if reference is None:
        print(f"warning: the retain model's AUC {ref} is no reference; PrivLeak not computed")

    def evaluate(tag: str, spec: tuple[str, str | None]) -> None:
        summaries[tag] = P.eval_stage(
            out / "evals" / tag, spec, "muse", data, reference, opts, timings, f"eval_{tag}"
        )

    evaluate("target", (str(target), None))
    for m in methods:
        name = f"{m}+{args.variant}" if args.variant else m
        run = P.unlearn_stage(
            str(target),
            forget,
            retain,
            out / "runs" / name,
            m,
            {"epochs": args.epochs, "seed": 0, **args.overrides},
            timings,
            f"unlearn_{name}",
        )
        evaluate(name, P.model_spec(run, str(target)))

    table = []
    for tag, s in summaries.items():
        cells = [
            "ref" if tag == "retain_model" and key == "privleak" else P.fmt(s.get(key), spec)
            for key, _, spec in COLUMNS
        ]
        wall = timings.get(f"unlearn_{tag}")
        table.append([tag, *cells, P.fmt(wall, ".0f") if wall else "-"])
    text = P.markdown_table(["model", *(c[1] for c in COLUMNS), "unlearn s"], table)
    P.write_text(out / "table.md", text)
    result = {
        "protocol": {k: getattr(args, k) for k in PROTOCOL_KEYS},
        "methods": methods,
        "variant": {args.variant: args.overrides} if args.variant else None,
        "selection": counts,
        "reference_auc": reference,
        "models": {tag: {key: s.get(key) for key, _, _ in COLUMNS} for tag, s in summaries.items()},
        "timings": timings.values,
    }
    P.write_json(out / "summary.json", result)
    print(text)
    return result


if __name__ == "__main__":
    main()

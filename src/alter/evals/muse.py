"""MUSE-News metrics: VerbMem, KnowMem (forget / retain) and PrivLeak, as MUSE computes them.

Definitions follow MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for
Language Models") and its reference code (``swj0419/muse_bench``: ``eval.py``,
``metrics/verbmem.py``, ``metrics/knowmem.py``, ``metrics/privleak.py``, ``metrics/logger.py``):

* **ROUGE**: ``rouge_score`` with ``use_stemmer=False`` (MUSE's ``RougeEvalLogger``; TOFU turns
  the stemmer on, MUSE does not), ``score(reference, prediction)``.
* **VerbMem** (C1, no verbatim memorisation) on ``verbmem/forget``: greedy continuation of each
  ``prompt`` for ``max_new_tokens`` tokens (MUSE: 128), scored against the true continuation
  ``gt`` cut to its first ``max_new_tokens`` tokens (tokenised with special tokens, decoded
  without them, as MUSE does). The metric is the mean **ROUGE-L F1** (MUSE's
  ``verbmem_agg_key = 'mean_rougeL'``, the F-measure).
* **KnowMem** (C2 on ``knowmem/forget_qa``, C4 utility on ``knowmem/retain_qa``): few-shot QA.
  The prompt is every in-context example of the split's ``*_qa_icl`` file as
  ``"Question: {q}\\nAnswer: {a}\\n\\n"`` followed by ``"Question: {q}\\nAnswer: "``; no chat
  template. Greedy decoding for ``max_new_tokens`` tokens (MUSE: 32), the output is cut before
  the first ``"\\n\\n"``, ``"\\nQuestion"`` or ``"Question:"``, and the metric is the mean
  **ROUGE-L F1** against the answer (MUSE's ``knowmem_agg_key = 'mean_rougeL'``). ROUGE-L recall
  is stored per item too (MUSE logs it; TOFU-style readers may want it), but it is not the
  metric.
* **PrivLeak** (C3) on ``privleak/forget`` vs ``privleak/holdout``: the Min-K% Prob (k = 0.4)
  membership attack's AUC with forget texts as members (:mod:`alter.evals.mia`), and
  ``PrivLeak = (AUC_f - AUC_retrain) / AUC_retrain * 100`` in MUSE's AUC convention (see
  :func:`alter.evals.mia.privleak`). It needs the AUC of a model trained without the forget set
  (MUSE's "retrain" model) on the same texts; without one, only the raw AUC is reported and the
  summary says why PrivLeak is missing.

MUSE reports these numbers multiplied by 100; here they stay in [0, 1] (PrivLeak in %), as in
open-unlearning. Prompts (text), not chat templates, are fed to the model: MUSE's target models
are base LMs. Outputs are decoded with ``skip_special_tokens=True``; MUSE also asks for
``clean_up_tokenization_spaces``, which recent transformers ignore for BPE tokenizers. Prompts
longer than the model's context minus ``max_new_tokens`` keep their *last* tokens (the text
closest to the continuation). Every split takes an optional ``limit`` (first
``limit`` rows) so the evaluation runs on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alter.data.benchmarks import load_muse_news
from alter.evals import mia
from alter.models import eval_mode

VERBMEM_MAX_NEW_TOKENS = 128
KNOWMEM_MAX_NEW_TOKENS = 32
# MUSE's get_prefix_before_words_occur: the answer ends where the model starts a new example.
KNOWMEM_STOP = ("\n\n", "\nQuestion", "Question:")
PRIVLEAK_K = 0.4


# ---------------------------------------------------------------------------------- pure parts


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)


def muse_rouge(prediction: str, reference: str) -> dict[str, float]:
    """MUSE's ROUGE of one prediction: ``rougeL_f1``, ``rougeL_recall``, ``rouge1_f1``, ``rouge1_recall``.

    No stemming. An empty prediction (or reference) scores 0 everywhere.
    """
    s = _scorer().score(reference, prediction)
    return {
        "rougeL_f1": float(s["rougeL"].fmeasure),
        "rougeL_recall": float(s["rougeL"].recall),
        "rouge1_f1": float(s["rouge1"].fmeasure),
        "rouge1_recall": float(s["rouge1"].recall),
    }


def knowmem_prompt(question: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """MUSE's few-shot QA prompt: the shots, then ``"Question: {question}\\nAnswer: "``."""
    head = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    return head + f"Question: {question}\nAnswer: "


def cut_at_stop(text: str, stops: Sequence[str] = KNOWMEM_STOP) -> str:
    """The text before the first occurrence of any stop string (each applied in turn, as MUSE)."""
    for s in stops:
        text = text.split(s)[0]
    return text


def truncate_reference(tokenizer, text: str, max_tokens: int) -> str:
    """MUSE's VerbMem reference: the first ``max_tokens`` ids of ``text`` (special tokens
    included, so a BOS counts), decoded without special tokens."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# --------------------------------------------------------------------------------- generation


def model_max_length(model, default: int = 2048) -> int:
    """The model's context length from its config (``max_position_embeddings`` / ``n_positions``)."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


@torch.no_grad()
def generate_continuations(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuations of raw-text prompts (tokenised with special tokens, no chat template).

    Batches are left-padded and sorted by length. A prompt longer than ``max_length -
    max_new_tokens`` tokens (``max_length`` defaults to the model's context) keeps its last
    tokens, after the BOS token if the tokenizer adds one. Decoding stops at EOS.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    budget = (max_length or model_max_length(model)) - max_new_tokens
    if budget < 1:
        raise ValueError(f"max_length leaves no room for a prompt and {max_new_tokens} new tokens")
    bos = tokenizer.bos_token_id
    encoded = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=True)["input_ids"]
        if len(ids) > budget:
            keep_bos = bos is not None and ids[0] == bos
            ids = ([bos] if keep_bos else []) + ids[len(ids) - budget + keep_bos :]
        encoded.append(ids)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [""] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_batches = math.ceil(len(order) / batch_size)
    device = next(model.parameters()).device
    with eval_mode(model):
        for s in tqdm(
            range(0, len(order), batch_size),
            total=n_batches,
            desc=desc,
            disable=not progress,
            leave=False,
        ):
            idx = order[s : s + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):
                ids[b, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[b, width - len(encoded[i]) :] = 1
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            ).cpu()
            for b, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[b, width:], skip_special_tokens=True)
    return out


# ---------------------------------------------------------------------------------- metrics


def evaluate_verbmem(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    *,
    max_new_tokens: int = VERBMEM_MAX_NEW_TOKENS,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """Per item: ``index``, ``input`` (prompt), ``ground_truth`` (cut), ``generation`` and ROUGE."""
    rows = list(rows)
    if not rows:
        raise ValueError("verbmem: no rows")
    prompts = [r.get("prompt", r.get("question")) for r in rows]
    gts = [
        truncate_reference(tokenizer, r.get("gt", r.get("answer")), max_new_tokens) for r in rows
    ]
    gens = generate_continuations(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        desc="verbmem",
    )
    return [
        {"index": i, "input": p, "ground_truth": g, "generation": out, **muse_rouge(out, g)}
        for i, (p, g, out) in enumerate(zip(prompts, gts, gens, strict=True))
    ]


def evaluate_knowmem(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    shots: Sequence[Mapping] = (),
    *,
    max_new_tokens: int = KNOWMEM_MAX_NEW_TOKENS,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """Per item: ``index``, ``input`` (question), ``prompt``, ``ground_truth``, ``generation``, ROUGE.

    ``shots`` are the in-context QA rows (MUSE: all of ``forget_qa_icl`` / ``retain_qa_icl``).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("knowmem: no rows")
    pairs = [(s["question"], s["answer"]) for s in shots]
    prompts = [knowmem_prompt(r["question"], pairs) for r in rows]
    raw = generate_continuations(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        desc="knowmem",
    )
    items = []
    for i, (r, p, out) in enumerate(zip(rows, prompts, raw, strict=True)):
        gen = cut_at_stop(out)
        items.append(
            {
                "index": i,
                "input": r["question"],
                "prompt": p,
                "ground_truth": r["answer"],
                "generation": gen,
                **muse_rouge(gen, r["answer"]),
            }
        )
    return items


def privleak_result(
    report: Mapping, reference_auc: float | None, attack: str = "min_k"
) -> tuple[float | None, str | None]:
    """``(PrivLeak %, reason)`` from an :func:`~alter.evals.mia.mia_report`; reason when ``None``."""
    if attack not in mia.ATTACKS:
        raise ValueError(f"unknown attack '{attack}'; choose from {', '.join(mia.ATTACKS)}")
    if reference_auc is None:
        return None, (
            f"no retain reference: PrivLeak not computed (raw {attack} AUC "
            f"{report[attack]:.4f} reported; pass the retrained model's AUC as the reference)"
        )
    return mia.privleak(report[attack], reference_auc), None


# --------------------------------------------------------------------------------- the whole


MUSE_METRICS = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")


@dataclass
class MuseEval:
    """Per-item values of each MUSE metric, the MIA report, and the aggregates."""

    verbmem: list[dict] | None = None
    knowmem_forget: list[dict] | None = None
    knowmem_retain: list[dict] | None = None
    mia_report: dict | None = None
    privleak: float | None = None
    privleak_reason: str | None = None
    privleak_attack: str = "min_k"
    reference_auc: float | None = None
    meta: dict = field(default_factory=dict)

    def summary(self) -> dict[str, float | str | None]:
        """open-unlearning's MUSE SUMMARY keys (values in [0, 1]; PrivLeak in %)."""
        out: dict[str, float | str | None] = {}
        for key, items in (
            ("forget_verbmem_ROUGE", self.verbmem),
            ("forget_knowmem_ROUGE", self.knowmem_forget),
            ("retain_knowmem_ROUGE", self.knowmem_retain),
        ):
            if items:
                out[key] = _mean(it["rougeL_f1"] for it in items)
        if self.mia_report is not None:
            for attack in mia.ATTACKS:
                out[f"mia_{attack}"] = self.mia_report[attack]
            out["privleak"] = self.privleak
            if self.privleak is None:
                out["privleak_reason"] = self.privleak_reason
            else:
                out["privleak_reference_auc"] = self.reference_auc
        return out

    def to_eval_json(self) -> dict:
        """open-unlearning's EVAL layout: ``{metric: {"agg_value", "value_by_index"}}``.

        ROUGE metrics map each index to ``{"rougeL_f1", "rougeL_recall", "rouge1_f1",
        "rouge1_recall", "input", "ground_truth", "generation"}``; ``mia_<attack>`` holds
        ``agg_value`` (AUC, forget = members) and ``forget`` / ``holdout`` ``value_by_index``
        of ``{"score"}`` (higher = member, :mod:`alter.evals.mia`'s sign; open-unlearning stores
        the negation); ``privleak`` holds ``agg_value`` (``None`` with a ``reason`` when no
        reference AUC was given) and ``reference_auc``.
        """
        keep = ("rougeL_f1", "rougeL_recall", "rouge1_f1", "rouge1_recall")
        keep += ("input", "ground_truth", "generation")
        summary = self.summary()
        out: dict = {}
        for key, items in (
            ("forget_verbmem_ROUGE", self.verbmem),
            ("forget_knowmem_ROUGE", self.knowmem_forget),
            ("retain_knowmem_ROUGE", self.knowmem_retain),
        ):
            if items:
                out[key] = {
                    "agg_value": summary[key],
                    "value_by_index": {
                        str(it["index"]): {k: it[k] for k in keep if k in it} for it in items
                    },
                }
        if self.mia_report is not None:
            scores = self.mia_report["scores"]
            for attack in mia.ATTACKS:
                out[f"mia_{attack}"] = {
                    "agg_value": self.mia_report[attack],
                    "auc": self.mia_report[attack],
                    **{
                        role: {
                            "value_by_index": {
                                str(i): {"score": s} for i, s in enumerate(scores[group][attack])
                            }
                        }
                        for role, group in (("forget", "members"), ("holdout", "nonmembers"))
                    },
                }
            out["privleak"] = {
                "agg_value": self.privleak,
                "attack": self.privleak_attack,
                "reference_auc": self.reference_auc,
            }
            if self.privleak is None:
                out["privleak"]["reason"] = self.privleak_reason
        if self.meta:
            out["meta"] = self.meta
        return out


def load_muse_splits(data_dir: str | Path, limit: int | None = None) -> dict[str, list]:
    """The MUSE-News rows each metric reads, each cut to its first ``limit`` rows (ICL shots kept)."""

    def rows(subset: str, split: str, cap: bool = True) -> list:
        rs = load_muse_news(subset, split, data_dir=data_dir).rows
        return rs[:limit] if cap and limit is not None else rs

    return {
        "verbmem": rows("verbmem", "forget"),
        "knowmem_forget": rows("knowmem", "forget_qa"),
        "knowmem_forget_icl": rows("knowmem", "forget_qa_icl", cap=False),
        "knowmem_retain": rows("knowmem", "retain_qa"),
        "knowmem_retain_icl": rows("knowmem", "retain_qa_icl", cap=False),
        "privleak_forget": rows("privleak", "forget"),
        "privleak_holdout": rows("privleak", "holdout"),
    }


def evaluate_muse(
    model,
    tokenizer,
    splits: Mapping[str, Sequence],
    *,
    metrics: Sequence[str] = MUSE_METRICS,
    reference_auc: float | None = None,
    attack: str = "min_k",
    k: float = PRIVLEAK_K,
    verbmem_max_new_tokens: int = VERBMEM_MAX_NEW_TOKENS,
    knowmem_max_new_tokens: int = KNOWMEM_MAX_NEW_TOKENS,
    batch_size: int = 8,
    max_length: int | None = None,
    privleak_max_length: int = 2048,
    meta: dict | None = None,
    progress: bool = False,
) -> MuseEval:
    """Every requested MUSE metric on ``splits`` (as :func:`load_muse_splits` returns them).

    ``reference_auc``: the retrained model's AUC for the same attack on the same texts, in
    :mod:`alter.evals.mia`'s convention (forget = members); ``privleak_max_length`` caps the
    tokens scored per PrivLeak document (also capped at the model's context).
    """
    unknown = [m for m in metrics if m not in MUSE_METRICS]
    if unknown:
        raise ValueError(f"unknown MUSE metric(s) {unknown}; choose from {', '.join(MUSE_METRICS)}")
    if attack not in mia.ATTACKS:
        raise ValueError(f"unknown attack '{attack}'; choose from {', '.join(mia.ATTACKS)}")
    gen_kw = {"batch_size": batch_size, "max_length": max_length, "progress": progress}
    result = MuseEval(privleak_attack=attack, reference_auc=reference_auc, meta=dict(meta or {}))
    if "verbmem_f" in metrics:
        result.verbmem = evaluate_verbmem(
            model, tokenizer, splits["verbmem"], max_new_tokens=verbmem_max_new_tokens, **gen_kw
        )
    for name, split in (("knowmem_f", "forget"), ("knowmem_r", "retain")):
        if name in metrics:
            items = evaluate_knowmem(
                model,
                tokenizer,
                splits[f"knowmem_{split}"],
                splits[f"knowmem_{split}_icl"],
                max_new_tokens=knowmem_max_new_tokens,
                **gen_kw,
            )
            setattr(result, f"knowmem_{split}", items)
    if "privleak" in metrics:
        result.mia_report = mia.mia_report(
            model,
            tokenizer,
            splits["privleak_forget"],
            splits["privleak_holdout"],
            k=k,
            batch_size=batch_size,
            max_length=min(privleak_max_length, model_max_length(model)),
            progress=progress,
        )
        result.privleak, result.privleak_reason = privleak_result(
            result.mia_report, reference_auc, attack
        )
    return result

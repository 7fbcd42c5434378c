"""A local fluency measure for generations, in place of the paper's GPT-4o judge (unavailable offline).

Three numbers per generation, each a plain function of text or of token NLLs:

* **Perplexity under the original model** (the model *before* unlearning): ``exp(mean NLL)`` of
  the generated tokens given the prompt the generation answered. An unlearned model that starts
  to emit gibberish gets a high perplexity from the original model even when its own
  perplexity is low. Computed on the *re-tokenised* generation text, conditioned on the same
  prompt string, without an end-of-sequence token (a generation cut at ``max_new_tokens`` has
  none). An empty generation has no tokens: its perplexity is ``None``.
* **Repetition rate** ``rep-n`` (Welleck et al. 2019, "Neural text degeneration with unlikelihood
  training", seq-rep-n): ``1 - |unique n-grams| / |n-grams|`` within one generation, default
  ``n = 4`` so that loops ("the the the", a repeated sentence) score high while ordinary text
  scores 0.
* **distinct-n** (Li et al. 2016, "A diversity-promoting objective function for neural
  conversation models"): ``|unique n-grams| / |n-grams|`` within one generation, for n = 1, 2.

Words for the n-gram measures are ``text.lower().split()`` (whitespace tokens, lower-cased): no
model tokenizer, so the numbers compare across models. A generation with fewer than ``n`` words
has no n-grams and gets ``None`` for that measure (not 0 and not 1: there is nothing to judge);
:func:`fluency_summary` averages the defined values and counts empty generations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from alter.data.collate import IGNORE_INDEX, Collator, Encoded, to_device
from alter.losses import sequence_nll
from alter.models import eval_mode

REPETITION_N = 4


def words(text: str) -> list[str]:
    """Lower-cased whitespace tokens: the unit of the n-gram measures."""
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All ``n``-grams of ``tokens`` in order (``len(tokens) - n + 1`` of them, or none)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(text: str, n: int) -> float | None:
    """``|unique n-grams| / |n-grams|`` of one text; ``None`` when it has fewer than ``n`` words."""
    grams = ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(text: str, n: int = REPETITION_N) -> float | None:
    """seq-rep-n: ``1 - distinct_n(text, n)``, the share of n-grams that repeat an earlier one."""
    d = distinct_n(text, n)
    return None if d is None else 1.0 - d


def perplexity(total_nll: float, n_tokens: int) -> float | None:
    """``exp(total_nll / n_tokens)``; ``None`` for zero tokens (an empty generation)."""
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    if n_tokens == 0:
        return None
    return math.exp(total_nll / n_tokens)


@dataclass
class FluencyItem:
    """Fluency of one generation; ``None`` where the measure is undefined (see module docstring)."""

    n_words: int
    repetition_rate: float | None
    distinct_1: float | None
    distinct_2: float | None
    ppl: float | None = None  # under the original model; None when not computed or empty


def text_fluency(text: str, *, repetition_n: int = REPETITION_N) -> FluencyItem:
    """The model-free measures of one generation."""
    return FluencyItem(
        n_words=len(words(text)),
        repetition_rate=repetition_rate(text, repetition_n),
        distinct_1=distinct_n(text, 1),
        distinct_2=distinct_n(text, 2),
    )


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def fluency_summary(items: Sequence[FluencyItem]) -> dict[str, float | int | None]:
    """Means of the defined per-item values, ``n`` and ``n_empty`` (generations with no words)."""
    return {
        "n": len(items),
        "n_empty": sum(1 for it in items if it.n_words == 0),
        "ppl": _mean(it.ppl for it in items),
        "repetition_rate": _mean(it.repetition_rate for it in items),
        "distinct_1": _mean(it.distinct_1 for it in items),
        "distinct_2": _mean(it.distinct_2 for it in items),
    }


def as_dicts(items: Sequence[FluencyItem]) -> list[dict]:
    return [asdict(it) for it in items]


# ------------------------------------------------------------------------------- model part


def _ids(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


@torch.no_grad()
def generation_nll(
    model,
    tokenizer,
    contexts: Sequence[str],
    generations: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    add_special_tokens: bool = False,
    progress: bool = False,
) -> list[tuple[float, int]]:
    """Per generation ``(summed NLL, token count)`` of ``generation`` after ``context``.

    ``contexts`` are the exact strings the generations continued (e.g. the chat-formatted
    question). Context and generation are tokenised apart and concatenated, only generation
    tokens are scored; when the pair exceeds ``max_length`` the context loses tokens on the left.
    An empty generation gives ``(0.0, 0)``.
    """
    if len(contexts) != len(generations):
        raise ValueError(f"{len(contexts)} contexts but {len(generations)} generations")
    out: list[tuple[float, int]] = [(0.0, 0)] * len(contexts)
    enc: list[Encoded] = []
    for i, (ctx, gen) in enumerate(zip(contexts, generations, strict=True)):
        target = _ids(tokenizer, gen, False) if gen else []
        if not target:
            continue
        target = target[: max_length - 1]
        prompt = _ids(tokenizer, ctx, add_special_tokens)[-(max_length - len(target)) :]
        enc.append(Encoded(prompt + target, [IGNORE_INDEX] * len(prompt) + target, index=i))
    enc.sort(key=lambda e: len(e.input_ids))
    collate = Collator(tokenizer.pad_token_id)
    starts = range(0, len(enc), batch_size)
    device = next(model.parameters()).device
    with eval_mode(model):
        for s in tqdm(starts, desc="fluency", disable=not progress, leave=False):
            b = to_device(collate(enc[s : s + batch_size]), device)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            total, count = sequence_nll(logits, b["labels"])
            for i, t, c in zip(b["index"].tolist(), total.tolist(), count.tolist(), strict=True):
                out[i] = (t, c)
    return out


def evaluate_fluency(
    generations: Sequence[str],
    *,
    model=None,
    tokenizer=None,
    contexts: Sequence[str] | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    add_special_tokens: bool = False,
    repetition_n: int = REPETITION_N,
    progress: bool = False,
) -> list[FluencyItem]:
    """Fluency of every generation; with ``model`` (the original model) also its perplexity."""
    items = [text_fluency(g, repetition_n=repetition_n) for g in generations]
    if model is None:
        return items
    if tokenizer is None or contexts is None:
        raise ValueError("perplexity needs the tokenizer and the contexts of the generations")
    nll = generation_nll(
        model,
        tokenizer,
        contexts,
        generations,
        batch_size=batch_size,
        max_length=max_length,
        add_special_tokens=add_special_tokens,
        progress=progress,
    )
    for it, (total, count) in zip(items, nll, strict=True):
        it.ppl = perplexity(total, count)
    return items

"""QA metrics on a set of rows: answer likelihood, greedy generation, ROUGE-L recall, fact recall.

* ``nll``: mean negative log-likelihood per answer token (teacher forcing).
* ``prob``: TOFU's length-normalised answer probability, ``exp(-nll)``.
* ``rougeL_recall``: ROUGE-L recall of the greedy generation against the answer (rouge-score,
  stemmer on), as TOFU reports it.
* ``fact_recall``: 1 if the row's ``value`` field (the fact itself, present in the built-in
  benchmark) appears in the generation, case-insensitively; only when rows carry ``value``.

Every function returns per-row values; :func:`summarise` gives means.

Inside :func:`alter.distributed.sharded_eval` (``alter eval`` under ``accelerate launch``) the
likelihoods and the generations are computed on a contiguous slice of the rows per process and
gathered on every process, in row order (batches differ from one process's, so values can differ
in the last float bits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from alter.data.collate import batches, encode_rows, format_prompt, to_device
from alter.distributed import eval_shard, gather_rows
from alter.losses import sequence_nll
from alter.models import eval_mode


@dataclass
class QARowResult:
    index: int
    nll: float
    prob: float
    generation: str | None = None
    rougeL_recall: float | None = None
    fact_recall: float | None = None


@torch.no_grad()
def answer_nll(
    model, tokenizer, rows, *, batch_size: int = 8, max_length: int = 512, progress: bool = False
) -> list[tuple[float, int]]:
    """Per row: ``(summed answer NLL, answer token count)``, in the rows' order."""
    rt = eval_shard()
    if rt is not None:
        rows = list(rows)
        return gather_rows(
            rt,
            len(rows),
            lambda idx: _answer_nll(
                model, tokenizer, [rows[i] for i in idx], batch_size, max_length, progress
            ),
        )
    return _answer_nll(model, tokenizer, rows, batch_size, max_length, progress)


def _answer_nll(model, tokenizer, rows, batch_size, max_length, progress):
    enc = encode_rows(rows, tokenizer, max_length=max_length)
    out: list[tuple[float, int] | None] = [None] * len(enc)
    pad = tokenizer.pad_token_id
    it = batches(enc, batch_size, pad, sort=True)
    n_batches = (len(enc) + batch_size - 1) // batch_size
    device = next(model.parameters()).device
    with eval_mode(model):
        for b in tqdm(it, total=n_batches, desc="likelihood", disable=not progress, leave=False):
            b = to_device(b, device)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            total, count = sequence_nll(logits, b["labels"])
            for i, t, c in zip(b["index"].tolist(), total.tolist(), count.tolist(), strict=True):
                out[i] = (t, c)
    return out  # type: ignore[return-value]


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    questions: list[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to each question, with the same prompt format as training."""
    rt = eval_shard()
    if rt is not None:
        return gather_rows(
            rt,
            len(questions),
            lambda idx: _generate(
                model, tokenizer, [questions[i] for i in idx], max_new_tokens, batch_size, progress
            ),
        )
    return _generate(model, tokenizer, questions, max_new_tokens, batch_size, progress)


@torch.no_grad()
def _generate(model, tokenizer, questions, max_new_tokens, batch_size, progress) -> list[str]:
    prompts = [
        tokenizer(format_prompt(tokenizer, q), add_special_tokens=False)["input_ids"]
        for q in questions
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    n_batches = (len(order) + batch_size - 1) // batch_size
    device = next(model.parameters()).device
    with eval_mode(model):
        for s in tqdm(
            range(0, len(order), batch_size),
            total=n_batches,
            desc="generate",
            disable=not progress,
            leave=False,
        ):
            idx = order[s : s + batch_size]
            width = max(len(prompts[i]) for i in idx)
            # Left padding so every prompt ends at the same position for batched generation.
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):
                p = prompts[i]
                ids[b, width - len(p) :] = torch.tensor(p)
                mask[b, width - len(p) :] = 1
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            ).cpu()
            for b, i in enumerate(idx):
                answers[i] = tokenizer.decode(gen[b, width:], skip_special_tokens=True).strip()
    return answers


def rouge_l_recall(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L recall per pair (rouge-score with the Porter stemmer, as TOFU computes it)."""
    from alter.evals.metrics import rouge_recall

    return [rouge_recall(p, r, "rougeL") for p, r in zip(predictions, references, strict=True)]


def qa_metrics(
    model,
    tokenizer,
    rows,
    *,
    generate: bool = True,
    batch_size: int = 8,
    max_new_tokens: int = 48,
    progress: bool = False,
) -> list[QARowResult]:
    """All per-row QA metrics for a :class:`~alter.data.schema.RowSet` of QA rows."""
    import math

    nll = answer_nll(model, tokenizer, rows, batch_size=batch_size, progress=progress)
    results = []
    for i, (total, count) in enumerate(nll):
        mean = total / max(count, 1)
        results.append(QARowResult(index=i, nll=mean, prob=math.exp(-mean)))
    if generate:
        gens = generate_answers(
            model,
            tokenizer,
            [r["question"] for r in rows],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        rouge = rouge_l_recall(gens, [r["answer"] for r in rows])
        for res, g, rl, row in zip(results, gens, rouge, rows, strict=True):
            res.generation = g
            res.rougeL_recall = rl
            if "value" in row:
                res.fact_recall = float(str(row["value"]).lower() in g.lower())
    return results


def summarise(results: list[QARowResult]) -> dict[str, float]:
    """Means of every metric present in the per-row results."""
    out: dict[str, float] = {"n": float(len(results))}
    for key in ("nll", "prob", "rougeL_recall", "fact_recall"):
        vals = [getattr(r, key) for r in results if getattr(r, key) is not None]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


def as_dicts(results: list[QARowResult]) -> list[dict]:
    return [asdict(r) for r in results]

"""Tokenisation and batching: prompts with the model's chat template, labels only on answers.

A QA row becomes ``prompt_ids + answer_ids + [eos]``: the prompt is the chat template applied to
the question (``Question: ...\\nAnswer:`` when the tokenizer has no template) and is tokenised
apart from the answer, so the supervised positions are exactly the answer tokens and the final
end-of-turn token. Labels are ``-100`` on the prompt and on padding. A text row is supervised on
every token after the first. Batches are padded on the right to their own longest row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
PLAIN_PROMPT = "Question: {question}\nAnswer:"


def format_prompt(tokenizer, question: str) -> str:
    """The text a model sees before its answer."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_PROMPT.format(question=question)


def _answer_text(tokenizer, answer: str) -> str:
    # The plain format ends with "Answer:"; a leading space keeps the answer's first word intact.
    return answer if getattr(tokenizer, "chat_template", None) else " " + answer


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class Encoded:
    """One tokenised row; ``index`` is its position in the source set (for per-index results)."""

    input_ids: list[int]
    labels: list[int]
    index: int
    truncated: bool = False


def encode_qa(
    tokenizer, question: str, answer: str, *, max_length: int = 512, index: int = 0
) -> Encoded:
    """Tokenise a QA pair; the answer is cut on the right if the pair exceeds ``max_length``."""
    prompt = _ids(tokenizer, format_prompt(tokenizer, question))
    target = _ids(tokenizer, _answer_text(tokenizer, answer))
    if tokenizer.eos_token_id is not None:
        target = target + [tokenizer.eos_token_id]
    truncated = len(prompt) + len(target) > max_length
    if truncated:
        # Keep at least one answer token so the row still has a supervised position.
        prompt = prompt[-(max_length - 1) :] if len(prompt) >= max_length else prompt
        target = target[: max_length - len(prompt)]
    return Encoded(
        input_ids=prompt + target,
        labels=[IGNORE_INDEX] * len(prompt) + target,
        index=index,
        truncated=truncated,
    )


def encode_text(tokenizer, text: str, *, max_length: int = 512, index: int = 0) -> Encoded:
    """Tokenise a text row; every token after the first is supervised."""
    ids = _ids(tokenizer, text)
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [tokenizer.bos_token_id] + ids
    truncated = len(ids) > max_length
    ids = ids[:max_length]
    labels = [IGNORE_INDEX] + ids[1:]
    return Encoded(input_ids=ids, labels=labels, index=index, truncated=truncated)


def encode_rows(rows, tokenizer, *, max_length: int = 512, source: str = "data") -> list[Encoded]:
    """Encode every row of a :class:`~alter.data.schema.RowSet` (or a list of dicts).

    Warns once, with a count, when rows had to be truncated.
    """
    kind = getattr(rows, "kind", None) or ("text" if "text" in rows[0] else "qa")
    out = []
    for i, r in enumerate(rows):
        if kind == "qa":
            out.append(
                encode_qa(tokenizer, r["question"], r["answer"], max_length=max_length, index=i)
            )
        else:
            out.append(encode_text(tokenizer, r["text"], max_length=max_length, index=i))
    n = sum(e.truncated for e in out)
    if n:
        warnings.warn(
            f"{getattr(rows, 'source', source)}: {n} of {len(out)} rows exceed max_length={max_length} "
            "tokens and were truncated",
            UserWarning,
            stacklevel=2,
        )
    return out


@dataclass
class Collator:
    """Right-pads a list of :class:`Encoded` rows into a batch of tensors."""

    pad_token_id: int

    def __call__(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in items)
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for b, e in enumerate(items):
            n = len(e.input_ids)
            ids[b, :n] = torch.tensor(e.input_ids)
            labels[b, :n] = torch.tensor(e.labels)
            mask[b, :n] = 1
        index = torch.tensor([e.index for e in items], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": index}


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on ``device`` (the same tensors when they are already there)."""
    return {k: v.to(device) for k, v in batch.items()}


def batches(encoded: list[Encoded], batch_size: int, pad_token_id: int, *, sort: bool = False):
    """Yield padded batches in order (``sort=True`` groups similar lengths: faster evaluation)."""
    order = list(range(len(encoded)))
    if sort:
        order.sort(key=lambda i: len(encoded[i].input_ids))
    collate = Collator(pad_token_id)
    for start in range(0, len(order), batch_size):
        yield collate([encoded[i] for i in order[start : start + batch_size]])

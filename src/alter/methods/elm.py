"""ELM, erasure of language memory (Gandikota et al. 2024, "Erasing Conceptual Knowledge from
Language Models"): a LoRA trained toward the model's own "novice" view of the forget set.

The erasure target at every answer position ``t`` of a forget row ``x`` comes from the frozen
original model ``p`` (the LoRA model with its adapters disabled) read three ways::

    log p*(v) = log p(v | x_<t) + eta * (log p(v | c_novice, x_<t) - log p(v | c_expert, x_<t)) - log Z

``c_expert`` / ``c_novice`` are prompts prepended to the question before the chat template (for
text rows, to the text), so the answer tokens are the same in all three and are aligned one by
one. A peft LoRA (r 8, alpha 16, the seven projections; the base frozen) is trained with::

    L = w_erase  * mean_{t in answers(F)} CE(p*_t, p_theta(. | x_<t))
      + w_retain * mean_{t in answers(R)} KL(p(. | r_<t) || p_theta(. | r_<t))
      + w_consistency * mean_{t in g} NLL_theta(g_t | q, g_<t)

* erase: the soft cross-entropy to ``p*`` on the forget row, without prefix;
* retain: the KL to the frozen model on retain answers (the soft cross-entropy to its
  distribution minus a constant: same gradient, and it reads 0 at the start);
* consistency (the paper's fluency term): ``g`` is ``consistency_tokens`` (16) tokens generated
  once in ``setup`` after each forget question ``q`` by greedy decoding from ``p*`` itself (the
  three contexts advance together, one token at a time), so the model learns to keep talking
  fluently, the erased way, where it used to recall. Text rows use their first half as ``q``.

Prompts (config fields ``expert_prompt``, ``novice_prompt``, ``topic``; joined to the question
with a space): "You are an expert in {topic}." and "You are a novice in {topic} who knows
nothing about it.", ``topic`` the row's ``subdomain`` when it has one, else "the following
subject".

Defaults: ``eta`` 2, held constant: the authors' code ramps eta up along each sequence starting
from 2, and a constant eta gives every position the same strength. Weights 1, 1, 1; lr 1e-4, the
LoRA baseline's.

Cost: ``p*`` is recomputed on every step (three no-grad forwards of the frozen model, plus one
for the retain reference) instead of being cached, which would take N x T x V floats (gigabytes
for a TOFU-size forget set and a 50k vocabulary). No copy of the model is kept: the frozen model
is the LoRA model with its adapters switched off. The run directory is a peft adapter.

Under FSDP the frozen base is sharded before ``setup`` (as for LoRA) and the adapters stay whole
on every process; switching them off changes no FSDP group, and every process runs the same
forwards (setup's generation runs every forget row everywhere; each step runs the same seven).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alter.adapters.config import DEFAULT_TARGETS
from alter.adapters.io import base_fingerprint
from alter.adapters.model import target_names
from alter.data.collate import IGNORE_INDEX, Collator, Encoded, encode_qa, to_device
from alter.losses import (
    batch_mean,
    elm_target_logprobs,
    masked_mean,
    mean_token_nll,
    shift,
    soft_cross_entropy,
    token_kl,
)
from alter.methods.common import logits, save_peft_adapter
from alter.models import eval_mode


@dataclass
class ELMConfig:
    eta: float = field(default=2.0, metadata={"help": "erasure strength in the target p*"})
    expert_prompt: str = field(
        default="You are an expert in {topic}.",
        metadata={"help": "prefix that makes the forget knowledge likely ({topic} is filled in)"},
    )
    novice_prompt: str = field(
        default="You are a novice in {topic} who knows nothing about it.",
        metadata={"help": "prefix that makes it unlikely ({topic} is filled in)"},
    )
    topic: str = field(
        default="the following subject",
        metadata={"help": "topic of rows without a subdomain field"},
    )
    erase_weight: float = field(default=1.0, metadata={"help": "weight of the erase term"})
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the retain KL term"})
    consistency_weight: float = field(
        default=1.0, metadata={"help": "weight of the consistency (fluency) term"}
    )
    consistency_tokens: int = field(
        default=16, metadata={"help": "tokens generated from p* per forget row (0: no term)"}
    )
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    target_modules: str = field(
        default=DEFAULT_TARGETS, metadata={"help": "regex (re.search) of the layers to adapt"}
    )

    def __post_init__(self):
        if self.eta <= 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")
        for name in ("expert_prompt", "novice_prompt"):
            try:
                getattr(self, name).format(topic="x")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"{name} may only use the {{topic}} placeholder ({e!r})") from None
        if not self.topic.strip():
            raise ValueError("topic must not be empty")
        weights = (self.erase_weight, self.retain_weight, self.consistency_weight)
        if min(weights) < 0 or self.erase_weight == 0:
            raise ValueError("the term weights must be >= 0 and erase_weight > 0")
        if self.consistency_tokens < 0:
            raise ValueError(f"consistency_tokens must be >= 0, got {self.consistency_tokens}")
        if self.r < 1 or self.lora_alpha <= 0:
            raise ValueError("r must be >= 1 and lora_alpha > 0")
        try:
            re.compile(self.target_modules)
        except re.error as e:
            raise ValueError(f"target_modules is not a valid regex: {e}") from None


def answer_positions(labels: torch.Tensor) -> list[torch.Tensor]:
    """Per row of ``labels`` ``(B, T)``, the logit positions that predict a supervised token."""
    return [row.nonzero().squeeze(-1) for row in labels[:, 1:] != IGNORE_INDEX]


def _prompt_len(enc: Encoded) -> int:
    """Tokens before the first supervised one (the prompt of a QA row)."""
    return next(k for k, lb in enumerate(enc.labels) if lb != IGNORE_INDEX)


def aligned_positions(*labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, positions)`` index tensors into each batch's logits, aligned token by token.

    Each batch holds the same rows with different prefixes; row ``b`` contributes its first
    ``n_b`` answer positions, ``n_b`` the fewest among the batches (a prefix can push a long
    answer past ``max_length``).
    """
    per_batch = [answer_positions(lb) for lb in labels]
    counts = [min(pos[b].numel() for pos in per_batch) for b in range(labels[0].shape[0])]
    rows = torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in enumerate(counts)])
    return [
        (rows, torch.cat([p[:n] for p, n in zip(pos, counts, strict=True)])) for pos in per_batch
    ]


def _text_prompt(enc: Encoded) -> list[int]:
    """A text row's stand-in for a question: its first half."""
    return enc.input_ids[: max(1, len(enc.input_ids) // 2)]


def _prefixed(
    tok, row: dict, enc: Encoded, kind: str, prefix: str, max_length: int
) -> tuple[Encoded, list[int]]:
    """``row`` with ``prefix`` before its question (QA) or text, and the prompt for generation.

    A QA row is re-encoded, so the prefix sits inside the chat template; its answer tokens are
    those of ``enc``. A text row gets the prefix's tokens in front and keeps ``enc``'s labels.
    """
    if kind == "qa":
        out = encode_qa(
            tok,
            f"{prefix} {row['question']}",
            row["answer"],
            max_length=max_length,
            index=enc.index,
        )
        return out, out.input_ids[: _prompt_len(out)]
    head = tok(prefix + "\n", add_special_tokens=False)["input_ids"]
    ids = (head + enc.input_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(head) + enc.labels)[:max_length]
    return Encoded(ids, labels, index=enc.index), head + _text_prompt(enc)


@torch.no_grad()
def _next_logits(model, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """Next-token logits ``(B, V)`` after each sequence (left-padded into one batch)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s) :] = torch.tensor(s)
        mask[b, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    device = next(model.parameters()).device
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        use_cache=False,
    )
    return out.logits[:, -1, :]


@torch.no_grad()
def erased_continuations(
    model,
    prompts: list[tuple[list[int], list[int], list[int]]],
    *,
    eta: float,
    n_tokens: int,
    eos_id: int | None,
    pad_id: int,
    batch_size: int = 8,
) -> list[list[int]]:
    """Greedy decoding from ``p*``: ``prompts[i]`` = (plain, expert, novice) prompt token ids.

    The three contexts get the same new token at every step; a row stops after its EOS.
    """
    out: list[list[int]] = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        gen: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        for _ in range(n_tokens):
            base, expert, novice = (
                _next_logits(model, [p[k] + g for p, g in zip(chunk, gen, strict=True)], pad_id)
                for k in range(3)
            )
            nxt = elm_target_logprobs(base, expert, novice, eta).argmax(-1).tolist()
            for i, t in enumerate(nxt):
                if not done[i]:
                    gen[i].append(t)
                    done[i] = t == eos_id
            if all(done):
                break
        out.extend(gen)
    return out


class ELM:
    name = "elm"
    description = "LoRA toward the model's expert/novice-contrast target + retain KL + fluency"
    default_lr = 1e-4
    uses_retain = True
    # Writes its adapters only, which FSDP leaves whole on every process: no gather at save.
    saves_adapter_only = True
    Config = ELMConfig

    def __init__(self, cfg: ELMConfig | None = None):
        self.cfg = cfg or ELMConfig()

    def setup(self, ctx) -> None:
        from peft import LoraConfig, get_peft_model

        tok, cfg = ctx.tokenizer, self.cfg
        targets = target_names(ctx.model, cfg.target_modules)
        self.base_fingerprint = base_fingerprint(ctx.model)
        self.collate = Collator(ctx.pad_id)
        kind = getattr(ctx.forget, "kind", None) or ("text" if "text" in ctx.forget[0] else "qa")

        self.expert_enc, self.novice_enc, prompts = [], [], []
        for i, enc in enumerate(ctx.forget_enc):
            row = ctx.forget[i]
            topic = row.get("subdomain") or cfg.topic
            plain = enc.input_ids[: _prompt_len(enc)] if kind == "qa" else _text_prompt(enc)
            (expert, e_prompt), (novice, n_prompt) = (
                _prefixed(tok, row, enc, kind, tpl.format(topic=topic), ctx.cfg.max_length)
                for tpl in (cfg.expert_prompt, cfg.novice_prompt)
            )
            self.expert_enc.append(expert)
            self.novice_enc.append(novice)
            prompts.append((plain, e_prompt, n_prompt))

        self.consistency_enc = None
        if cfg.consistency_tokens > 0 and cfg.consistency_weight > 0:
            with eval_mode(ctx.model):
                gen = erased_continuations(
                    ctx.model,
                    prompts,
                    eta=cfg.eta,
                    n_tokens=cfg.consistency_tokens,
                    eos_id=tok.eos_token_id,
                    pad_id=ctx.pad_id,
                )
            self.consistency_enc = [
                Encoded(p[0] + g, [IGNORE_INDEX] * len(p[0]) + g, index=i)
                for i, (p, g) in enumerate(zip(prompts, gen, strict=True))
            ]

        lora = LoraConfig(
            r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets
        )
        # float32 LoRA weights on a bf16 base (peft's default, explicit: they are what trains)
        self.model = get_peft_model(ctx.model, lora, autocast_adapter_dtype=True)
        self.model.train()

    def trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def _frozen_logits(self, batch):
        # eval mode: the target must not carry dropout noise
        with eval_mode(self.model), self.model.disable_adapter():
            return logits(self.model, batch)

    def loss(self, forget, retain):
        cfg = self.cfg
        idx = forget["index"].tolist()
        device = forget["input_ids"].device
        expert_b = to_device(self.collate([self.expert_enc[i] for i in idx]), device)
        novice_b = to_device(self.collate([self.novice_enc[i] for i in idx]), device)
        at = aligned_positions(forget["labels"], expert_b["labels"], novice_b["labels"])
        target = elm_target_logprobs(
            self._frozen_logits(forget)[at[0]],
            self._frozen_logits(expert_b)[at[1]],
            self._frozen_logits(novice_b)[at[2]],
            cfg.eta,
        )
        erase = batch_mean(soft_cross_entropy(logits(self.model, forget)[at[0]], target))

        lg = logits(self.model, retain)
        mask = shift(lg, retain["labels"])[1] != IGNORE_INDEX
        kl = masked_mean(token_kl(lg, self._frozen_logits(retain), retain["labels"]), mask)

        loss = cfg.erase_weight * erase + cfg.retain_weight * kl
        stats = {"erase_ce": erase.item(), "retain_kl": kl.item()}
        if self.consistency_enc is not None:
            cb = to_device(self.collate([self.consistency_enc[i] for i in idx]), device)
            cons = mean_token_nll(logits(self.model, cb), cb["labels"])
            loss = loss + cfg.consistency_weight * cons
            stats["consistency_nll"] = cons.item()
        return loss, stats

    def result(self):
        return self.model

    def save(self, out: Path, tokenizer) -> None:
        save_peft_adapter(self.model, out, self.name, self.base_fingerprint)

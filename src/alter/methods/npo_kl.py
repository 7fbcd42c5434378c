"""NPO_KL: NPO's forget term with a KL retain term (Zhang et al. 2024; open-unlearning's NPO
with ``retain_loss_type: KL``).

    L = gamma * mean_{x in F} NPO(x) + alpha * mean_{t in answers(R)} KL(p_ref(.|t) || p_theta(.|t))

The KL needs the reference's full next-token distribution on every retain batch, so one frozen
copy of the initial model is made in ``setup`` and shared by every step (forget log-probabilities
are still precomputed once, as in NPO). Under FSDP the copy is sharded like the model
(:meth:`alter.distributed.Runtime.frozen_copy`): 1/N of the weights per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from alter.data.collate import IGNORE_INDEX
from alter.losses import masked_mean, shift, token_kl
from alter.methods.common import (
    forget_term,
    freeze_except,
    logits,
    save_full_model,
    sequence_logprobs,
)


@dataclass
class NPOKLConfig:
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature"})
    gamma: float = field(default=1.0, metadata={"help": "weight of the forget (NPO) term"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain KL term"})

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.gamma < 0 or self.alpha < 0:
            raise ValueError("gamma and alpha must be >= 0")


class NPOKL:
    name = "npo_kl"
    description = "NPO + KL to the initial model on retain (full; keeps one frozen copy)"
    default_lr = 1e-5
    uses_retain = True
    Config = NPOKLConfig

    def __init__(self, cfg: NPOKLConfig | None = None):
        self.cfg = cfg or NPOKLConfig()

    def setup(self, ctx) -> None:
        self.model = ctx.model
        self.ref_logp = sequence_logprobs(self.model, ctx.forget_enc, ctx.pad_id)
        self.ref = ctx.rt.frozen_copy(self.model)
        self.params = freeze_except(self.model, lambda _: True)
        self.model.train()

    def trainable(self):
        return self.params

    def loss(self, forget, retain):
        f = forget_term(
            "npo", logits(self.model, forget), forget, ref_logp=self.ref_logp, beta=self.cfg.beta
        )
        lg = logits(self.model, retain)
        with torch.no_grad():
            ref_lg = logits(self.ref, retain)
        kl = masked_mean(
            token_kl(lg, ref_lg, retain["labels"]), shift(lg, retain["labels"])[1] != IGNORE_INDEX
        )
        loss = self.cfg.gamma * f + self.cfg.alpha * kl
        return loss, {"npo": f.item(), "retain_kl": kl.item()}

    def result(self):
        return self.model

    def save(self, out: Path, tokenizer) -> None:
        save_full_model(self.model, tokenizer, out, {"method": self.name})

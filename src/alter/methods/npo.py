"""NPO, negative preference optimisation (Zhang et al. 2024), with a retain NLL term.

    L = gamma * mean_{x in F} -(2/beta) log sigmoid(-beta (log p_theta(y|x) - log p_ref(y|x)))
        + alpha * mean_{t in answers(R)} NLL_t

``log p`` sums over answer tokens; the reference is the model before unlearning. Its forget
log-probabilities are computed once in ``setup`` (they are all NPO needs from it), so no frozen
copy of the model is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alter.methods.common import (
    forget_term,
    freeze_except,
    logits,
    retain_nll,
    save_full_model,
    sequence_logprobs,
)


@dataclass
class NPOConfig:
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature"})
    gamma: float = field(default=1.0, metadata={"help": "weight of the forget (NPO) term"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain NLL term"})

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.gamma < 0 or self.alpha < 0:
            raise ValueError("gamma and alpha must be >= 0")


class NPO:
    name = "npo"
    description = "negative preference optimisation vs the initial model + retain NLL (full)"
    default_lr = 1e-5
    uses_retain = True
    Config = NPOConfig

    def __init__(self, cfg: NPOConfig | None = None):
        self.cfg = cfg or NPOConfig()

    def setup(self, ctx) -> None:
        self.model = ctx.model
        self.ref_logp = sequence_logprobs(self.model, ctx.forget_enc, ctx.pad_id)
        self.params = freeze_except(self.model, lambda _: True)
        self.model.train()

    def trainable(self):
        return self.params

    def loss(self, forget, retain):
        f = forget_term(
            "npo", logits(self.model, forget), forget, ref_logp=self.ref_logp, beta=self.cfg.beta
        )
        r = retain_nll(logits(self.model, retain), retain)
        loss = self.cfg.gamma * f + self.cfg.alpha * r
        return loss, {"npo": f.item(), "retain_nll": r.item()}

    def result(self):
        return self.model

    def save(self, out: Path, tokenizer) -> None:
        save_full_model(self.model, tokenizer, out, {"method": self.name})

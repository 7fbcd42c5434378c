"""SimNPO (Fan et al. 2024): reference-free, length-normalised NPO, with a retain NLL term.

    L = gamma * mean_{x in F} -(2/beta) log sigmoid(beta (NLL(y|x)/|y| - delta))
        + alpha * mean_{t in answers(R)} NLL_t

Defaults beta = 4.5, delta = 0 (the paper's TOFU setting), gamma = 0.125, alpha = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alter.losses import batch_mean, sequence_nll, simnpo_loss
from alter.methods.common import freeze_except, logits, retain_nll, save_full_model


@dataclass
class SimNPOConfig:
    beta: float = field(default=4.5, metadata={"help": "SimNPO inverse temperature"})
    delta: float = field(default=0.0, metadata={"help": "reward margin on the mean NLL"})
    gamma: float = field(default=0.125, metadata={"help": "weight of the forget term"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain NLL term"})

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.gamma < 0 or self.alpha < 0:
            raise ValueError("gamma and alpha must be >= 0")


class SimNPO:
    name = "simnpo"
    description = "SimNPO: length-normalised, reference-free NPO + retain NLL (full)"
    default_lr = 1e-5
    uses_retain = True
    Config = SimNPOConfig

    def __init__(self, cfg: SimNPOConfig | None = None):
        self.cfg = cfg or SimNPOConfig()

    def setup(self, ctx) -> None:
        self.model = ctx.model
        self.params = freeze_except(self.model, lambda _: True)
        self.model.train()

    def trainable(self):
        return self.params

    def loss(self, forget, retain):
        nll, count = sequence_nll(logits(self.model, forget), forget["labels"])
        f = batch_mean(simnpo_loss(nll, count, self.cfg.beta, self.cfg.delta))
        r = retain_nll(logits(self.model, retain), retain)
        loss = self.cfg.gamma * f + self.cfg.alpha * r
        return loss, {"simnpo": f.item(), "retain_nll": r.item()}

    def result(self):
        return self.model

    def save(self, out: Path, tokenizer) -> None:
        save_full_model(self.model, tokenizer, out, {"method": self.name})

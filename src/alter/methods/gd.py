"""GD, gradient difference (Liu et al. 2022; TOFU's baseline): GA plus retain NLL.

L = gamma * (-mean_{t in answers(F)} NLL_t) + alpha * mean_{t in answers(R)} NLL_t
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alter.methods.common import forget_term, freeze_except, logits, retain_nll, save_full_model


@dataclass
class GDConfig:
    gamma: float = field(default=1.0, metadata={"help": "weight of the forget (ascent) term"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain NLL term"})

    def __post_init__(self):
        if self.gamma < 0 or self.alpha < 0:
            raise ValueError("gamma and alpha must be >= 0")


class GD:
    name = "gd"
    description = "gradient difference: ascent on forget + NLL on retain (full parameters)"
    default_lr = 1e-5
    uses_retain = True
    Config = GDConfig

    def __init__(self, cfg: GDConfig | None = None):
        self.cfg = cfg or GDConfig()

    def setup(self, ctx) -> None:
        self.model = ctx.model
        self.params = freeze_except(self.model, lambda _: True)
        self.model.train()

    def trainable(self):
        return self.params

    def loss(self, forget, retain):
        f = forget_term("ga", logits(self.model, forget), forget)
        r = retain_nll(logits(self.model, retain), retain)
        loss = self.cfg.gamma * f + self.cfg.alpha * r
        return loss, {"forget_nll": -f.item(), "retain_nll": r.item()}

    def result(self):
        return self.model

    def save(self, out: Path, tokenizer) -> None:
        save_full_model(self.model, tokenizer, out, {"method": self.name})

"""GA, gradient ascent (Jang et al. 2023; TOFU's baseline): raise the forget answers' NLL.

    L = -mean_{t in answers(F)} NLL_t

Every weight is trained; nothing anchors the retain set, which is why GA collapses models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alter.methods.common import forget_term, freeze_except, logits, save_full_model


@dataclass
class GAConfig:
    """GA has no options beyond the shared ones."""


class GA:
    name = "ga"
    description = "gradient ascent on the forget answers (full parameters)"
    default_lr = 1e-5
    uses_retain = False
    Config = GAConfig

    def __init__(self, cfg: GAConfig | None = None):
        self.cfg = cfg or GAConfig()

    def setup(self, ctx) -> None:
        self.model = ctx.model
        self.params = freeze_except(self.model, lambda _: True)
        self.model.train()

    def trainable(self):
        return self.params

    def loss(self, forget, retain):
        loss = forget_term("ga", logits(self.model, forget), forget)
        return loss, {"forget_nll": -loss.item()}

    def result(self):
        return self.model

    def save(self, out: Path, tokenizer) -> None:
        save_full_model(self.model, tokenizer, out, {"method": self.name})

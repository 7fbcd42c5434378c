"""LoRA: a standard peft LoRA (r 8, alpha 16, the seven projections) trained with a chosen forget
loss and a retain NLL term; the base weights stay frozen.

    L = gamma * L_forget + alpha * mean_{t in answers(R)} NLL_t,
    L_forget in { GA: -mean NLL,  NPO: mean -(2/beta) log sigmoid(-beta (log p - log p_ref)),
                  IHL: mean_t 1 + p(y_t) - max_{v != y_t} p(v) }

The NPO reference is the model before the adapter (its forget log-probabilities are computed
once). The run directory is a peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
that ``alter.load(model, adapter=RUN)`` and ``--adapter RUN`` read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alter.adapters.config import DEFAULT_TARGETS
from alter.adapters.model import target_names
from alter.methods.common import (
    FORGET_LOSSES,
    forget_term,
    logits,
    retain_nll,
    save_peft_adapter,
    sequence_logprobs,
)


@dataclass
class LoRAConfig:
    loss: str = field(default="npo", metadata={"help": "forget loss: ga | npo | ihl"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    target_modules: str = field(
        default=DEFAULT_TARGETS, metadata={"help": "regex (re.search) of the layers to adapt"}
    )
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature (loss=npo)"})
    gamma: float = field(default=1.0, metadata={"help": "weight of the forget term"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain NLL term"})

    def __post_init__(self):
        if self.loss not in FORGET_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(FORGET_LOSSES)}, got {self.loss!r}")
        if self.r < 1 or self.lora_alpha <= 0:
            raise ValueError("r must be >= 1 and lora_alpha > 0")
        if self.beta <= 0 or self.gamma < 0 or self.alpha < 0:
            raise ValueError("beta must be > 0, gamma and alpha >= 0")


class LoRA:
    name = "lora"
    description = "peft LoRA (r 8, all projections) with a GA / NPO / IHL forget loss + retain NLL"
    default_lr = 1e-4
    uses_retain = True
    # Writes its adapters only, which FSDP leaves whole on every process: no gather at save.
    saves_adapter_only = True
    Config = LoRAConfig

    def __init__(self, cfg: LoRAConfig | None = None):
        self.cfg = cfg or LoRAConfig()

    def setup(self, ctx) -> None:
        from peft import LoraConfig, get_peft_model

        from alter.adapters.io import base_fingerprint

        targets = target_names(ctx.model, self.cfg.target_modules)
        self.ref_logp = (
            sequence_logprobs(ctx.model, ctx.forget_enc, ctx.pad_id)
            if self.cfg.loss == "npo"
            else None
        )
        self.base_fingerprint = base_fingerprint(ctx.model)
        lora = LoraConfig(
            r=self.cfg.r, lora_alpha=self.cfg.lora_alpha, lora_dropout=0.0, target_modules=targets
        )
        # float32 LoRA weights on a bf16 base (peft's default, explicit: they are what trains)
        self.model = get_peft_model(ctx.model, lora, autocast_adapter_dtype=True)
        self.model.train()

    def trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def loss(self, forget, retain):
        f = forget_term(
            self.cfg.loss,
            logits(self.model, forget),
            forget,
            ref_logp=self.ref_logp,
            beta=self.cfg.beta,
        )
        r = retain_nll(logits(self.model, retain), retain)
        loss = self.cfg.gamma * f + self.cfg.alpha * r
        return loss, {f"forget_{self.cfg.loss}": f.item(), "retain_nll": r.item()}

    def result(self):
        return self.model

    def save(self, out: Path, tokenizer) -> None:
        save_peft_adapter(self.model, out, self.name, self.base_fingerprint)

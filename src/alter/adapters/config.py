"""Configuration of the ALTER asymmetric adapter (defaults from ALTER_SPEC.md)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Literal

# Llama / Qwen / Mistral / Gemma projection names, and GPT-2's Conv1D names.
# How an ALTER model finds the routing entropy at inference (AlterModel.set_inference).
INFERENCE_MODES = ("prepass", "probe")
DEFAULT_TARGETS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc)$"


@dataclass
class AlterConfig:
    """Shape of the adapter and the routing rules. Saved as ``adapter_config.json``."""

    r: int = field(default=8, metadata={"help": "rank of the shared A and of every B"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; scaling = alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: str = field(
        default=DEFAULT_TARGETS,
        metadata={"help": "regex matched (re.search) against module names to adapt"},
    )
    n_forget_experts: int = field(
        default=2, metadata={"help": "D: forget subdomain experts (set from the data when known)"}
    )
    routing_layer: int | None = field(
        default=None,
        metadata={"help": "decoder layer whose hidden state feeds the router (default: middle)"},
    )
    entropy_q: float = field(
        default=1.0, metadata={"help": "q of the entropy that splits tokens (1 = Shannon)"}
    )
    threshold: float = field(
        default=1.2, metadata={"help": "entropy threshold (nats at q=1); high if S > threshold"}
    )
    threshold_mode: Literal["fixed", "adaptive"] = field(
        default="fixed",
        metadata={"help": "fixed: use threshold; adaptive: valley of the training histogram"},
    )
    q_struct: float = field(default=0.5, metadata={"help": "q_A of the structural-invariance term"})
    tau_high: float = field(
        default=0.8, metadata={"help": "router temperature on high-entropy tokens"}
    )
    top_k_high: int = field(default=3, metadata={"help": "slots kept on high-entropy tokens"})
    tau_low: float = field(
        default=0.01, metadata={"help": "router temperature on low-entropy tokens"}
    )
    top_k_low: int = field(default=1, metadata={"help": "slots kept on low-entropy tokens"})
    init_eta: float = field(
        default=0.02, metadata={"help": "step size of the centroid-based B_f init"}
    )
    seed: int = field(default=0, metadata={"help": "seed of A's Kaiming init"})
    layers: Literal["all", "upper"] = field(
        default="all",
        metadata={
            "help": "adapt every matched layer (all), or only those in decoder blocks from the "
            "routing layer up (upper: the blocks below stay the base model)"
        },
    )
    inference: Literal["prepass", "probe"] = field(
        default="prepass",
        metadata={
            "help": "routing entropy at inference: a base pre-pass (exact) or the entropy probe "
            "on the routing-layer hidden state (no base logits; one pass with layers=upper)"
        },
    )

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_forget_experts < 1:
            raise ValueError(f"n_forget_experts must be >= 1, got {self.n_forget_experts}")
        try:
            re.compile(self.target_modules)
        except re.error as e:
            raise ValueError(f"target_modules is not a valid regex: {e}") from None
        if self.entropy_q <= 0 or self.q_struct <= 0:
            raise ValueError("entropy q values must be > 0")
        if self.entropy_q > 1 and self.threshold >= 1 / (self.entropy_q - 1):
            raise ValueError(
                f"threshold {self.threshold} can never be exceeded at q={self.entropy_q} "
                f"(Tsallis entropy < 1/(q-1) = {1 / (self.entropy_q - 1):.3f}); lower it"
            )
        if self.threshold_mode not in ("fixed", "adaptive"):
            raise ValueError(
                f"threshold_mode must be 'fixed' or 'adaptive', got {self.threshold_mode!r}"
            )
        if self.tau_high <= 0 or self.tau_low <= 0:
            raise ValueError("router temperatures must be > 0")
        if self.top_k_high < 1 or self.top_k_low < 1:
            raise ValueError("top_k values must be >= 1")
        if self.layers not in ("all", "upper"):
            raise ValueError(f"layers must be 'all' or 'upper', got {self.layers!r}")
        if self.inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be 'prepass' or 'probe', got {self.inference!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AlterConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown adapter config field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

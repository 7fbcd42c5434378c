"""AsymLoRA: a HydraLoRA-style asymmetric LoRA (Tian et al. 2024, "HydraLoRA: An Asymmetric LoRA
Architecture for Efficient Fine-Tuning") trained with the inverse hinge loss on every forget answer
token plus retain NLL.

It has ALTER's adapter shape (one shared A, several B) but none of its entropy machinery: no
entropy split of the tokens, no masking of A's gradient, no oracle experts, no structural term;
a dense router decides the mix of heads from the layer input alone. Comparing the two isolates
what the entropy guidance adds. On every targeted linear layer (``W0`` frozen)::

    y = W0 x + (alpha / r) * sum_{i=1..N} w_i(x) B_i A x,      w(x) = softmax(W_g x)

``A`` ``(r, d_in)`` is shared (Kaiming init, as peft's LoRA A); the ``N`` heads ``B_i``
``(d_out, r)`` are one zero-initialised ``(N, d_out, r)`` tensor, so injection changes nothing
until training; the router ``W_g`` ``(N, d_in)`` has the default Kaiming init, as in HydraLoRA (a
zero router would give every head the same gradient, and the heads would never differ). The loss::

    L = beta * mean_{t in answers(F)} IHL_t + gamma * mean_{t in answers(R)} NLL_t,
    IHL_t = 1 + p(y_t) - max_{v != y_t} p(v)

Defaults: r 8 and alpha 16, as the LoRA baseline and ALTER; N = 4 heads, a handful as in
HydraLoRA, and about ALTER's number of B matrices (one retention expert plus its forget experts),
so the two adapters have similar sizes; lr 1e-3, ALTER's learning rate for its B matrices (only
the adapter trains and every B starts at zero, so full-parameter rates such as 1e-5 barely move it).

A run directory holds ``adapter_config.json`` (format ``asymlora/1``: the config, the adapted
module names and a checksum of the base weights) and ``adapter_model.safetensors``;
:func:`load_asymlora` (or ``alter.load(model, adapter=RUN)``) puts it back on a plain model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from alter.adapters.config import DEFAULT_TARGETS
from alter.adapters.io import (
    METHOD_META,
    AdapterError,
    base_fingerprint,
    other_base_error,
    same_base,
)
from alter.adapters.layer import _in_out
from alter.adapters.model import target_names
from alter.errors import ConfigError
from alter.methods.common import forget_term, freeze_except, logits, retain_nll

ADAPTER_PREFIX = "asym_"
FORMAT = "asymlora/1"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass
class AsymLoRAConfig:
    r: int = field(default=8, metadata={"help": "rank of the shared A and of every B head"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    n_heads: int = field(
        default=4, metadata={"help": "N: B heads sharing one A, mixed by the router"}
    )
    target_modules: str = field(
        default=DEFAULT_TARGETS, metadata={"help": "regex (re.search) of the layers to adapt"}
    )
    beta: float = field(default=1.0, metadata={"help": "weight of the IHL forget term"})
    gamma: float = field(default=1.0, metadata={"help": "weight of the retain NLL term"})

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if self.n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {self.n_heads}")
        try:
            re.compile(self.target_modules)
        except re.error as e:
            raise ValueError(f"target_modules is not a valid regex: {e}") from None
        if self.beta < 0 or self.gamma < 0:
            raise ValueError("beta and gamma must be >= 0")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


class AsymLoRALinear(nn.Module):
    """Wraps ``base_layer`` (``nn.Linear`` or GPT-2's ``Conv1D``, kept frozen) and adds the heads."""

    def __init__(self, base_layer: nn.Module, r: int, n_heads: int, scaling: float):
        super().__init__()
        self.base_layer = base_layer
        self.d_in, self.d_out = _in_out(base_layer)
        self.scaling = scaling
        # float32 whatever the base weights' dtype (as ALTER's, see alter.adapters.layer).
        kw = {"dtype": torch.float32, "device": base_layer.weight.device}
        self.asym_A = nn.Parameter(torch.empty(r, self.d_in, **kw))
        nn.init.kaiming_uniform_(self.asym_A, a=math.sqrt(5))
        self.asym_B = nn.Parameter(torch.zeros(n_heads, self.d_out, r, **kw))
        self.asym_router = nn.Linear(self.d_in, n_heads, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        h = x.to(self.asym_A.dtype)  # the adapter path in float32 (a no-op on a float32 base)
        ax = h @ self.asym_A.t()  # (..., r)
        w = torch.softmax(self.asym_router(h).float(), dim=-1).to(ax.dtype)  # (..., N)
        z = w[..., :, None] * ax[..., None, :]  # (..., N, r)
        delta = torch.einsum("...nr,nor->...o", z, self.asym_B)  # every head in one contraction
        return y + (self.scaling * delta).to(y.dtype)

    def extra_repr(self) -> str:
        n, _, r = self.asym_B.shape
        return f"d_in={self.d_in}, d_out={self.d_out}, r={r}, heads={n}, scaling={self.scaling}"


def is_asym_param(name: str) -> bool:
    return any(part.startswith(ADAPTER_PREFIX) for part in name.split("."))


def inject_asymlora(model: nn.Module, cfg: AsymLoRAConfig) -> list[str]:
    """Replace every linear layer ``cfg.target_modules`` selects with an :class:`AsymLoRALinear`."""
    names = target_names(model, cfg.target_modules)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = AsymLoRALinear(model.get_submodule(name), cfg.r, cfg.n_heads, cfg.scaling)
        setattr(parent, child, layer)
    return names


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.named_parameters() if is_asym_param(k)}


class AsymLoRA:
    name = "asymlora"
    description = (
        "HydraLoRA-style shared A + 4 routed B heads: IHL on all forget tokens + retain NLL"
    )
    default_lr = 1e-3
    uses_retain = True
    # Writes its adapters only, which FSDP leaves whole on every process: no gather at save.
    saves_adapter_only = True
    Config = AsymLoRAConfig

    def __init__(self, cfg: AsymLoRAConfig | None = None):
        self.cfg = cfg or AsymLoRAConfig()

    def setup(self, ctx) -> None:
        self.model = ctx.model
        # Before injection: the wrapped layers' weights are renamed (``...q_proj.base_layer.weight``).
        self.base_fingerprint = base_fingerprint(self.model)
        self.adapted = inject_asymlora(self.model, self.cfg)
        self.params = freeze_except(self.model, is_asym_param)
        self.model.train()

    def trainable(self):
        return self.params

    def loss(self, forget, retain):
        f = forget_term("ihl", logits(self.model, forget), forget)
        r = retain_nll(logits(self.model, retain), retain)
        loss = self.cfg.beta * f + self.cfg.gamma * r
        return loss, {"forget_ihl": f.item(), "retain_nll": r.item()}

    def result(self):
        return self.model

    def save(self, out: Path, tokenizer) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "config": asdict(self.cfg),
            "adapted_modules": self.adapted,
            **self.base_fingerprint,
            "base_model_type": getattr(self.model.config, "model_type", None),
        }
        save_file(
            adapter_state_dict(self.model), str(out / WEIGHTS_NAME), metadata={"format": FORMAT}
        )
        (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        method = {"method": self.name, "kind": "asymlora", **self.base_fingerprint}
        (out / METHOD_META).write_text(json.dumps(method, indent=2) + "\n")


def load_asymlora(model: nn.Module, path: str | Path, *, allow_other_base: bool = False):
    """Inject the AsymLoRA adapter saved in ``path`` into the plain HF ``model`` and load it.

    Everything is checked before ``model`` is touched: a missing or corrupted file, an adapter
    made for another architecture, or (unless ``allow_other_base``) other base weights raise
    :class:`~alter.adapters.io.AdapterError`. Returns ``model`` in eval mode; its outputs equal
    those of the trained model exactly.
    """
    path = Path(path)
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise AdapterError(f"{path}: not an AsymLoRA adapter directory (no {CONFIG_NAME})")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_path}: corrupted JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise AdapterError(f"{cfg_path}: unknown adapter format {found!r} (expected {FORMAT})")
    try:
        cfg = AsymLoRAConfig(**meta["config"])
        saved_names = list(meta["adapted_modules"])
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterError(f"{cfg_path}: invalid config ({e})") from None

    try:
        names = target_names(model, cfg.target_modules)
    except ConfigError:
        names = []
    if names != saved_names:
        raise AdapterError(
            f"{path}: adapter was trained for a different architecture "
            f"({meta.get('base_model_type')}, {len(saved_names)} adapted layers; this model has "
            f"{len(names)} matching layers)"
        )
    try:
        tensors = load_file(str(path / WEIGHTS_NAME))
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{path / WEIGHTS_NAME}: cannot read adapter weights ({e})") from None
    expected = {}
    for name in names:
        d_in, d_out = _in_out(model.get_submodule(name))
        expected[f"{name}.asym_A"] = (cfg.r, d_in)
        expected[f"{name}.asym_B"] = (cfg.n_heads, d_out, cfg.r)
        expected[f"{name}.asym_router.weight"] = (cfg.n_heads, d_in)
    if set(tensors) != set(expected):
        missing, unexpected = (
            sorted(set(expected) - set(tensors)),
            sorted(set(tensors) - set(expected)),
        )
        raise AdapterError(
            f"{path / WEIGHTS_NAME}: tensors do not match the config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise AdapterError(
                f"{path / WEIGHTS_NAME}: {k} has shape {tuple(tensors[k].shape)}, expected {shape}"
            )
    if not allow_other_base:
        fingerprint = base_fingerprint(model)
        if not same_base(meta, fingerprint):
            raise other_base_error(path, meta, fingerprint)

    inject_asymlora(model, cfg)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v)
    freeze_except(model, is_asym_param)
    model.eval()
    return model

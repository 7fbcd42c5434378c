"""RMU, representation misdirection for unlearning (Li et al. 2024, "The WMDP Benchmark: Measuring
and Reducing Malicious Use With Unlearning").

On forget batches, the hidden state ``h_l`` that decoder block ``l`` outputs is pushed toward a
fixed random direction scaled by ``c``; on retain batches it is held at the frozen model's::

    L = mean_{t in F} ||h_l(x_t; theta) - c u||^2 / H  +  alpha * mean_{t in R} ||h_l(x_t; theta) - h_l(x_t; theta_0)||^2 / H

means over every non-pad token (prompt and answer), ``H`` the hidden size. ``u`` is drawn once
from a generator seeded with the run's seed, uniform in [0, 1) per coordinate and normalised to
unit length, as in the paper's code. Only a few weights train: by default the MLP down
projection of blocks ``l-2 .. l`` (the paper trains layers 5, 6 and 7 of zephyr-7b).

Defaults, scaled to the model:

* ``layer``: 0-based block ``round(L / 4) - 1`` of ``L`` blocks, the paper's layer 7 of 32 (layer
  7 of 30 for SmolLM2-135M, layer 0 of a 4-layer test model).
* ``steering_coeff`` ``c``: ``steering_scale`` (5) times the mean L2 norm of the frozen model's
  layer-``l`` hidden states on the forget set. The hand-tuned values of the papers (6.5 for
  zephyr-7b, hundreds for larger models) track each model's activation scale, so a fixed ``c``
  means nothing on another model; a multiple of the measured norm does (Adaptive RMU, Dang et
  al. 2025, sets ``c`` the same way). Measured on SmolLM2-135M (docs/RESULTS.md): scale 5 forgets
  much more than 2 at the same lr; 20 puts the target out of reach (the forget MSE barely moves).
* ``alpha`` 100: the retain MSE is tiny at the start (the model is its own reference), so it
  needs a large weight to bind; the paper uses 1200 for zephyr-7b. 100 is not tuned; override it
  with ``--set alpha=...``. ``lr`` 5e-5, the paper's, for zephyr-7b; it barely moves SmolLM2-135M,
  whose down projections have ~10x larger weights (mean |W| 0.15): use ``--lr 1e-3`` there.

Memory: the retain reference needs the frozen model's activations on every retain batch, so one
frozen copy of the model up to block ``l`` (embeddings, blocks ``0..l``, final norm and head; no
gradients or optimiser state) is made in ``setup`` and shared by every step; under FSDP it is
sharded like the model (:meth:`alter.distributed.Runtime.frozen_copy`). Both forwards stop at
block ``l``: the block list is cut after it for the call (nothing above it can change ``h_l``), so
those layers are never run (and never receive gradient). The result is a full model directory.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from alter.adapters.model import last_logits_kwargs, num_layers
from alter.data.collate import Collator, to_device
from alter.distributed import lazy_init
from alter.errors import ConfigError
from alter.losses import activation_mse, masked_mean
from alter.methods.common import freeze_except, save_full_model

# Where the MLP down projection lives inside a decoder block (Llama/Qwen/Mistral/Gemma, GPT-2).
DOWN_PROJ_NAMES = ("mlp.down_proj", "mlp.c_proj")


@dataclass
class RMUConfig:
    layer: int | None = field(
        default=None,
        metadata={"help": "0-based decoder block whose output is steered (None: round(L/4) - 1)"},
    )
    trainable_regex: str | None = field(
        default=None,
        metadata={
            "help": "regex (re.search) of the parameter names to train "
            "(None: the MLP down projection of blocks layer-2..layer)"
        },
    )
    steering_coeff: float | None = field(
        default=None,
        metadata={"help": "c, the norm of the target c*u (None: steering_scale x mean norm)"},
    )
    steering_scale: float = field(
        default=5.0,
        metadata={"help": "c as a multiple of the mean layer-l hidden-state norm (forget set)"},
    )
    alpha: float = field(default=100.0, metadata={"help": "weight of the retain MSE term"})

    def __post_init__(self):
        if self.layer is not None and self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.trainable_regex is not None:
            try:
                re.compile(self.trainable_regex)
            except re.error as e:
                raise ValueError(f"trainable_regex is not a valid regex: {e}") from None
        if self.steering_coeff is not None and self.steering_coeff <= 0:
            raise ValueError(f"steering_coeff must be > 0, got {self.steering_coeff}")
        if self.steering_scale <= 0:
            raise ValueError(f"steering_scale must be > 0, got {self.steering_scale}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")


def default_layer(n_layers: int) -> int:
    return max(round(n_layers / 4), 1) - 1


def decoder_blocks(model: nn.Module) -> str:
    """Name of the ``ModuleList`` holding the decoder blocks (``model.layers``, ``transformer.h``)."""
    n = num_layers(model.config)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name
    raise ConfigError(f"cannot find the list of {n} decoder blocks in this model")


def default_trainable_regex(model: nn.Module, blocks: str, layer: int) -> str:
    """Regex of the MLP down projection of blocks ``layer-2 .. layer``."""
    block = model.get_submodule(f"{blocks}.{layer}")
    known = {name for name, _ in block.named_modules()}
    down = next((d for d in DOWN_PROJ_NAMES if d in known), None)
    if down is None:
        raise ConfigError(
            f"no MLP down projection ({', '.join(DOWN_PROJ_NAMES)}) in {blocks}.{layer}; "
            "set trainable_regex"
        )
    ids = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
    return rf"^{re.escape(blocks)}\.({ids})\.{re.escape(down)}\."


@contextlib.contextmanager
def first_blocks(model: nn.Module, blocks: str, n: int):
    """Inside, ``model``'s block list ``blocks`` holds only its first ``n`` blocks (the same
    module objects), so a forward runs those and then the final norm and head."""
    parent_name, _, attr = blocks.rpartition(".")
    parent = model.get_submodule(parent_name)
    full = getattr(parent, attr)
    setattr(parent, attr, full[:n])
    try:
        yield
    finally:
        setattr(parent, attr, full)


def _position(model: nn.Module, block: nn.Module) -> tuple[str, int]:
    """The name of the block list holding ``block`` and its index there."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            for i, m in enumerate(module):
                if m is block:
                    return name, i
    raise ConfigError(f"{type(block).__name__} is not in a block list of this model")


def block_output(model: nn.Module, block: nn.Module, batch: dict[str, torch.Tensor]):
    """Hidden state ``(B, T, H)`` that ``block`` outputs. Only the blocks up to ``block`` run:
    the block list is cut after it for the call (nothing above can change ``h_l``), and the head
    computes one position's logits (``logits_to_keep=1``), which are dropped. Nothing raises
    inside the forward, so under FSDP every group the forward enters also leaves it (its
    all-gathered weights resharded, its backward hooks set), on every process alike."""
    name, index = _position(model, block)
    captured = {}

    def hook(_module, _inputs, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    lazy_init(model)  # FSDP: find every group from the whole model first
    kwargs = last_logits_kwargs(model)
    handle = block.register_forward_hook(hook)
    try:
        with first_blocks(model, name, index + 1):
            model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
                **kwargs,
            )
    finally:
        handle.remove()
    return captured["h"]


class RMU:
    name = "rmu"
    description = "steer one layer's activations on forget data to c*u, retain MSE (few weights)"
    default_lr = 5e-5
    uses_retain = True
    Config = RMUConfig

    def __init__(self, cfg: RMUConfig | None = None):
        self.cfg = cfg or RMUConfig()

    def setup(self, ctx) -> None:
        self.model = model = ctx.model
        n_layers = num_layers(model.config)
        self.layer = self.cfg.layer if self.cfg.layer is not None else default_layer(n_layers)
        if self.layer >= n_layers:
            raise ConfigError(f"layer must be < {n_layers} (the model's layers), got {self.layer}")
        blocks = decoder_blocks(model)
        self.regex = self.cfg.trainable_regex or default_trainable_regex(model, blocks, self.layer)
        # The reference only ever runs blocks 0..l: copy those (under FSDP, sharded).
        with first_blocks(model, blocks, self.layer + 1):
            self.ref = ctx.rt.frozen_copy(model)
        self.block = model.get_submodule(f"{blocks}.{self.layer}")
        self.ref_block = self.ref.get_submodule(f"{blocks}.{self.layer}")

        pattern = re.compile(self.regex)
        self.params = freeze_except(model, lambda name: pattern.search(name))
        if not self.params:
            raise ConfigError(f"trainable_regex {self.regex!r} matches no parameter of this model")
        block_of = re.compile(rf"^{re.escape(blocks)}\.(\d+)\.")
        above = sorted(
            {
                int(m.group(1))
                for name, p in model.named_parameters()
                if p.requires_grad and (m := block_of.match(name)) and int(m.group(1)) > self.layer
            }
        )
        if above:
            raise ConfigError(
                f"trainable_regex selects parameters of block(s) {above}, above the steered "
                f"layer {self.layer}: they cannot change its activations"
            )

        hidden = model.get_input_embeddings().embedding_dim
        gen = torch.Generator().manual_seed(ctx.cfg.seed)
        u = torch.rand(hidden, generator=gen)
        self.u = u / u.norm()
        self.coeff = (
            self.cfg.steering_coeff
            if self.cfg.steering_coeff is not None
            else self.cfg.steering_scale * self._mean_norm(ctx)
        )
        self.target = self.coeff * self.u
        model.train()

    @torch.no_grad()
    def _mean_norm(self, ctx, batch_size: int = 8) -> float:
        """Mean L2 norm of the frozen model's layer-``l`` hidden states over non-pad forget tokens."""
        collate = Collator(ctx.pad_id)
        device = next(self.ref.parameters()).device
        total, count = 0.0, 0
        for s in range(0, len(ctx.forget_enc), batch_size):
            b = to_device(collate(ctx.forget_enc[s : s + batch_size]), device)
            norms = block_output(self.ref, self.ref_block, b).float().norm(dim=-1)
            mask = b["attention_mask"].bool()
            total += float(norms[mask].sum())
            count += int(mask.sum())
        return total / max(count, 1)

    def trainable(self):
        return self.params

    def loss(self, forget, retain):
        h = block_output(self.model, self.block, forget)
        f = masked_mean(
            activation_mse(h, self.target.to(h.device)), forget["attention_mask"].bool()
        )
        h_r = block_output(self.model, self.block, retain)
        with torch.no_grad():
            h_ref = block_output(self.ref, self.ref_block, retain)
        r = masked_mean(activation_mse(h_r, h_ref), retain["attention_mask"].bool())
        loss = f + self.cfg.alpha * r
        return loss, {"forget_mse": f.item(), "retain_mse": r.item()}

    def result(self):
        return self.model

    def save(self, out: Path, tokenizer) -> None:
        meta = {
            "method": self.name,
            "layer": self.layer,
            "steering_coeff": self.coeff,
            "trainable_regex": self.regex,
        }
        save_full_model(self.model, tokenizer, out, meta)

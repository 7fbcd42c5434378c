"""The loop every baseline runs, read top to bottom.

A method (one file each in this package) supplies ``setup`` (wrap or freeze the model, compute
whatever its loss needs once, e.g. reference log-probabilities), ``trainable`` (the parameters it
updates), ``loss`` (one scalar from a forget batch and a retain batch) and ``save``. The loop owns
everything else, so the shared options mean the same thing for every method:

- ``epochs``: passes over the forget set; one step = ``forget_batch_size`` forget rows plus
  ``retain_batch_size`` retain rows (the retain set is cycled, reshuffled each pass);
- ``max_steps`` caps the steps; ``lr`` is constant (AdamW, weight decay ``weight_decay``);
- gradients are clipped to ``max_grad_norm``; a non-finite loss or gradient stops the run.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from tqdm.auto import tqdm

from alter.data.collate import Collator, Encoded, encode_rows
from alter.errors import AlterError


class TrainingError(AlterError):
    """Training cannot go on (non-finite loss or gradient)."""


@dataclass
class UnlearnConfig:
    """Options every baseline shares (ALTER has its own, with the same names where they overlap)."""

    epochs: float = field(default=3.0, metadata={"help": "passes over the forget set"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps"})
    lr: float | None = field(
        default=None, metadata={"help": "learning rate (None: the method's default)"}
    )
    forget_batch_size: int = field(default=4, metadata={"help": "forget rows per step"})
    retain_batch_size: int = field(default=4, metadata={"help": "retain rows per step"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    max_length: int = field(default=256, metadata={"help": "tokens per row"})
    seed: int = field(default=0, metadata={"help": "seed of batching and initialisation"})

    def __post_init__(self):
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("forget_batch_size", "retain_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError("weight_decay must be >= 0 and max_grad_norm > 0")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")


@dataclass
class Context:
    """What ``setup`` gets: the model, the tokenizer, the rows and their encodings."""

    model: torch.nn.Module
    tokenizer: Any
    forget: Any  # RowSet
    retain: Any  # RowSet
    forget_enc: list[Encoded]
    retain_enc: list[Encoded]
    cfg: UnlearnConfig
    progress: bool = True

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


class Method(Protocol):
    """What a baseline provides (a Protocol: methods share no implementation by inheritance)."""

    name: ClassVar[str]
    description: ClassVar[str]
    default_lr: ClassVar[float]
    uses_retain: ClassVar[bool]  # False: the loop does not build retain batches

    def setup(self, ctx: Context) -> None: ...

    def trainable(self) -> list[torch.nn.Parameter]: ...

    def loss(
        self, forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def result(self) -> torch.nn.Module:
        """The unlearned model, ready for evaluation (a Hugging Face causal LM interface)."""
        ...

    def save(self, out: Path, tokenizer) -> None: ...


def _cycle(n: int, rng: random.Random):
    """Indices ``0..n-1`` reshuffled on every pass, forever."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


def total_steps(n_forget: int, cfg: UnlearnConfig) -> int:
    per_epoch = math.ceil(n_forget / cfg.forget_batch_size)
    total = math.ceil(cfg.epochs * per_epoch)
    return min(total, cfg.max_steps) if cfg.max_steps is not None else total


def run_method(
    method: Method,
    model: torch.nn.Module,
    tokenizer,
    forget,
    retain,
    cfg: UnlearnConfig,
    *,
    log_path: Path | None = None,
    progress: bool = True,
) -> dict:
    """Set up ``method`` on ``model`` and train it; returns a summary (times, steps, last losses)."""
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    f_enc = encode_rows(forget, tokenizer, max_length=cfg.max_length)
    r_enc = encode_rows(retain, tokenizer, max_length=cfg.max_length)
    ctx = Context(model, tokenizer, forget, retain, f_enc, r_enc, cfg, progress)
    method.setup(ctx)
    params = method.trainable()
    if not params:
        raise TrainingError(f"method '{method.name}' has no trainable parameters on this model")
    lr = cfg.lr if cfg.lr is not None else method.default_lr
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    collate = Collator(ctx.pad_id)
    rng = random.Random(cfg.seed)
    f_iter, r_iter = _cycle(len(f_enc), rng), _cycle(len(r_enc), rng)
    total = total_steps(len(f_enc), cfg)
    setup_s = time.perf_counter() - t0

    log = log_path.open("a") if log_path else None
    bar = tqdm(total=total, desc=method.name, disable=not progress, unit="step")
    tokens, stats = 0, {}
    t1 = time.perf_counter()
    try:
        for step in range(total):
            fb = collate(
                [f_enc[next(f_iter)] for _ in range(min(cfg.forget_batch_size, len(f_enc)))]
            )
            rb = None
            if method.uses_retain:
                n = min(cfg.retain_batch_size, len(r_enc))
                rb = collate([r_enc[next(r_iter)] for _ in range(n)])
            tokens += int(fb["attention_mask"].sum()) + (
                int(rb["attention_mask"].sum()) if rb else 0
            )
            loss, stats = method.loss(fb, rb)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{method.name}: loss became {loss.item()} at step {step + 1}; lower the lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if not torch.isfinite(norm):
                raise TrainingError(
                    f"{method.name}: gradient norm became {float(norm)} at step {step + 1}; lower the lr"
                )
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if log:
                rec = {"step": step + 1, "loss": loss.item(), **stats, "grad_norm": float(norm)}
                log.write(json.dumps(rec) + "\n")
    finally:
        bar.close()
        if log:
            log.close()
    train_s = time.perf_counter() - t1
    result = method.result()
    result.eval()
    n_train = sum(p.numel() for p in params)
    return {
        "method": method.name,
        "steps": total,
        "lr": lr,
        "trainable_parameters": n_train,
        "setup_seconds": setup_s,
        "train_seconds": train_s,
        "seconds": time.perf_counter() - t0,
        "tokens": tokens,
        "tokens_per_second": tokens / train_s if train_s > 0 else None,
        "last": stats,
    }

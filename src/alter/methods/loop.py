"""The loop every baseline runs, read top to bottom.

A method (one file each in this package) supplies ``setup`` (wrap or freeze the model, compute
whatever its loss needs once, e.g. reference log-probabilities), ``trainable`` (the parameters it
updates), ``loss`` (one scalar from a forget batch and a retain batch) and ``save``. The loop owns
everything else, so the shared options mean the same thing for every method:

- ``epochs``: passes over the forget set; one step = ``forget_batch_size`` forget rows plus
  ``retain_batch_size`` retain rows (the retain set is cycled, reshuffled each pass);
- ``max_steps`` caps the steps; ``lr`` is constant (AdamW, weight decay ``weight_decay``);
- gradients are clipped to ``max_grad_norm``; a non-finite loss or gradient stops the run;
- ``grad_accum`` cuts each step's batch into that many micro-batches (one backward each, one
  optimiser step); ``gradient_checkpointing`` recomputes activations in backward;
  ``mixed_precision`` ``bf16`` runs forwards under autocast.

Under ``accelerate launch`` each process takes a contiguous slice of every step's rows and the
gradients are summed over processes (:mod:`alter.distributed`): the same steps, the same loss
(a mean over the step's global batch), one replica per process, or one shard per process under
FSDP (the model is sharded after ``setup``; for the adapter methods the frozen base before it),
or a DeepSpeed ZeRO engine for the full-parameter methods (:mod:`alter.ds`).
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

from alter.data.collate import Collator, Encoded, encode_rows, to_device
from alter.distributed import (
    ADAPTER_FSDP_METHODS,
    LOAD_INTO_SHARDS,
    Runtime,
    ScaleOptions,
    clip_grad_norm,
    launch_runtime,
    local_bytes,
    runtime_for,
)
from alter.ds import start as deepspeed_engine
from alter.errors import AlterError, ConfigError
from alter.models import check_trainable_float32, enable_gradient_checkpointing


class TrainingError(AlterError):
    """Training cannot go on (non-finite loss or gradient)."""


@dataclass
class UnlearnConfig(ScaleOptions):
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
    checkpoint_every: int | None = field(
        default=50,
        metadata={"help": "save resumable state every N steps (None: never); see --resume"},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("forget_batch_size", "retain_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
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
    # The process's place in a data-parallel run (a plain single process when None): frozen
    # references are made with ``runtime.frozen_copy`` (sharded under FSDP).
    runtime: Runtime | None = None

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def rt(self) -> Runtime:
        return self.runtime or Runtime()


class Method(Protocol):
    """What a baseline provides (a Protocol: methods share no implementation by inheritance)."""

    name: ClassVar[str]
    description: ClassVar[str]
    default_lr: ClassVar[float]
    uses_retain: ClassVar[bool]  # False: the loop does not build retain batches
    # Optional ``saves_adapter_only = True``: ``save`` writes adapters only (whole on every
    # process under FSDP), so the pipeline gathers none of the sharded base before it.

    def setup(self, ctx: Context) -> None: ...

    def trainable(self) -> list[torch.nn.Parameter]: ...

    def loss(
        self, forget: dict[str, torch.Tensor], retain: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def result(self) -> torch.nn.Module:
        """The unlearned model, ready for evaluation (a Hugging Face causal LM interface)."""
        ...

    def save(self, out: Path, tokenizer) -> None: ...


def check_split(what: str, rows: int, rt: Runtime, grad_accum: int) -> None:
    """Every process needs a row of ``what`` in every micro-batch (the baselines' losses are
    opaque, so an empty slice cannot be stood in for)."""
    need = rt.world * grad_accum
    if rows < need:
        raise ConfigError(
            f"{what}: {rows} rows per step cannot be split into {grad_accum} micro-batch(es) "
            f"x {rt.world} process(es); raise the batch size to at least {need} or lower "
            "grad_accum / the number of processes"
        )


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


def schedule(
    n_forget: int, n_retain: int, cfg: UnlearnConfig, uses_retain: bool
) -> list[tuple[list[int], list[int]]]:
    """The row indices of every step, fixed up front by the seed (so a resumed run sees the same
    batches as an uninterrupted one)."""
    rng = random.Random(cfg.seed)
    f_iter, r_iter = _cycle(n_forget, rng), _cycle(n_retain, rng)
    out = []
    for _ in range(total_steps(n_forget, cfg)):
        f = [next(f_iter) for _ in range(min(cfg.forget_batch_size, n_forget))]
        r = (
            [next(r_iter) for _ in range(min(cfg.retain_batch_size, n_retain))]
            if uses_retain
            else []
        )
        out.append((f, r))
    return out


def _trainable_names(
    method: Method, params: list[torch.nn.Parameter]
) -> dict[str, torch.nn.Parameter]:
    ids = {id(p) for p in params}
    named = {
        n: p for n, p in method.result().named_parameters(remove_duplicate=True) if id(p) in ids
    }
    if len(named) != len(ids):
        raise TrainingError(f"method '{method.name}': trainable parameters outside its model")
    return named


def run_method(
    method: Method,
    model: torch.nn.Module,
    tokenizer,
    forget,
    retain,
    cfg: UnlearnConfig,
    *,
    log_path: Path | None = None,
    resume_dir: Path | None = None,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> dict:
    """Set up ``method`` on ``model`` and train it; returns a summary (times, steps, last losses).

    With ``resume_dir``, resumable state is saved there every ``cfg.checkpoint_every`` steps, and
    a run that finds a checkpoint there continues from it (same batches, same optimiser and RNG
    state): the result equals an uninterrupted run's. With a distributed ``runtime`` only rank 0
    writes the log and checkpoints; every process resumes from the same checkpoint.
    """
    from alter.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, truncate_log

    rt = runtime or launch_runtime(cfg.mixed_precision)
    rt = runtime_for(rt, method.name)
    if not rt.is_main:
        log_path, progress = None, False
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    f_enc = encode_rows(forget, tokenizer, max_length=cfg.max_length)
    r_enc = encode_rows(retain, tokenizer, max_length=cfg.max_length)
    check_split("forget_batch_size", min(cfg.forget_batch_size, len(f_enc)), rt, cfg.grad_accum)
    if method.uses_retain:
        check_split("retain_batch_size", min(cfg.retain_batch_size, len(r_enc)), rt, cfg.grad_accum)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    ctx = Context(model, tokenizer, forget, retain, f_enc, r_enc, cfg, progress, rt)
    adapter_fsdp = rt.fsdp is not None and method.name in ADAPTER_FSDP_METHODS
    if adapter_fsdp:
        # The frozen base is sharded before setup injects the adapters, which stay whole on
        # every process (their gradients are all-reduced); setup's forwards run every row on
        # every process, so the processes enter the same all-gathers.
        rt.shard_frozen(model)
    shard_first = rt.fsdp is not None and not adapter_fsdp and method.name in LOAD_INTO_SHARDS
    if shard_first:
        # A model loaded into its shards is sharded (filled) before setup, so it is never
        # whole; setup's forwards (NPO's reference pass) run every row on every process.
        rt.shard(model)
    method.setup(ctx)
    params = method.trainable()
    if not params:
        raise TrainingError(f"method '{method.name}' has no trainable parameters on this model")
    named = _trainable_names(method, params)
    if rt.fsdp is not None and not adapter_fsdp and not shard_first:
        # NPO_KL, RMU: setup copied the whole model into their sharded frozen reference; now
        # FSDP replaces every parameter of the model by its shard: train those.
        rt.shard(method.result())
        named = {n: p for n, p in method.result().named_parameters() if n in named}
        params = list(named.values())
    check_trainable_float32(params, method.name)  # a bf16 model trained in full is refused
    lr = cfg.lr if cfg.lr is not None else method.default_lr
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    collate = Collator(ctx.pad_id)
    plan = schedule(len(f_enc), len(r_enc), cfg, method.uses_retain)
    total = len(plan)
    start, tokens = 0, 0
    ckpt = latest_checkpoint(resume_dir) if resume_dir else None
    if ckpt is not None:
        tensors, state = load_checkpoint(ckpt, {"main": opt})
        for group in opt.param_groups:  # a resumed run may lower the lr (e.g. after a NaN)
            group["lr"] = lr
        rt.shard_optimizer_state(opt)
        rt.load_params(named, tensors)
        start, tokens = state["step"], state["tokens"]
        if log_path:
            truncate_log(log_path, lambda rec: rec.get("step", 0) <= start)
    # DeepSpeed: the engine takes the (resumed) model and AdamW; it reduces, clips and steps.
    zero = deepspeed_engine(rt, method.result(), named, opt, cfg.grad_accum, cfg.max_grad_norm)
    setup_s = time.perf_counter() - t0

    log = log_path.open("a") if log_path else None
    bar = tqdm(total=total, initial=start, desc=method.name, disable=not progress, unit="step")
    stats: dict = {}
    t1 = time.perf_counter()
    k = cfg.grad_accum
    try:
        for step in range(start, total):
            if zero is None:
                opt.zero_grad(set_to_none=True)
            f_idx, r_idx = plan[step]
            # Tokens of the whole step (padding excluded), the same on every process.
            tokens += sum(len(f_enc[i].input_ids) for i in f_idx)
            tokens += sum(len(r_enc[i].input_ids) for i in r_idx)
            losses, stats = [], {}
            for part in rt.parts(f_idx, r_idx, k):
                fb = to_device(collate([f_enc[i] for i in part.forget]), rt.device)
                rb = (
                    to_device(collate([r_enc[i] for i in part.retain]), rt.device)
                    if part.retain
                    else None
                )
                with rt.step(), rt.autocast():
                    loss, micro = method.loss(fb, rb)
                if zero is not None:
                    zero.backward(loss)
                else:
                    (loss / k if k > 1 else loss).backward()
                losses.append(loss.detach())
                for key, v in micro.items():
                    stats[key] = stats.get(key, 0.0) + v / k if k > 1 else v
            loss_value, *values = rt.sum(
                [sum(x.item() for x in losses) / k if k > 1 else losses[0].item(), *stats.values()]
            )
            stats = dict(zip(stats, values, strict=True))
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"{method.name}: loss became {loss_value} at step {step + 1}; lower the lr"
                    + _kept(resume_dir)
                )
            if zero is None:
                rt.all_reduce_grads(params)
                norm = clip_grad_norm(params, cfg.max_grad_norm)
            else:  # DeepSpeed clips and steps in one call (and skips a non-finite step)
                norm = zero.step()
            if not torch.isfinite(norm):
                raise TrainingError(
                    f"{method.name}: gradient norm became {float(norm)} at step {step + 1}; "
                    "lower the lr" + _kept(resume_dir)
                )
            if zero is None:
                opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if log:
                rec = {"step": step + 1, "loss": loss_value, **stats, "grad_norm": float(norm)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
            done = step + 1
            if (
                resume_dir
                and cfg.checkpoint_every
                and done % cfg.checkpoint_every == 0
                and done < total
            ):
                # Every process: under FSDP / DeepSpeed this gathers the shards. Rank 0 writes.
                tensors, opts = (zero or rt).checkpoint_state(named, {"main": opt})
                if rt.is_main:
                    save_checkpoint(resume_dir, done, tensors, opts, {"tokens": tokens})
    finally:
        bar.close()
        if log:
            log.close()
    train_s = time.perf_counter() - t1
    result = method.result()
    result.eval()
    n_train = sum(p.numel() for p in params)
    ref = getattr(method, "ref", None)  # NPO_KL's and RMU's frozen reference
    return {
        "method": method.name,
        "steps": total,
        "resumed_from_step": start if ckpt is not None else None,
        "lr": lr,
        "trainable_parameters": n_train,
        "processes": rt.world,
        **rt.sharding,
        # What this process (rank 0) holds of the frozen reference (1/N of it under FSDP).
        **({"reference_bytes_per_process": local_bytes(ref)} if ref is not None else {}),
        "setup_seconds": setup_s,
        "train_seconds": train_s,
        "seconds": time.perf_counter() - t0,
        "tokens": tokens,
        "tokens_per_second": (tokens / train_s) if train_s > 0 and start == 0 else None,
        "last": stats,
    }


def _kept(resume_dir: Path | None) -> str:
    from alter.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(resume_dir) if resume_dir else None
    if ckpt is None:
        return ""
    return f" (the last good checkpoint, {ckpt.name}, is kept: rerun with --resume to continue from it)"

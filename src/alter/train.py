"""Fine-tuning: how a user makes the "target" model that TOFU-style unlearning starts from.

One loop, read top to bottom: seeded shuffling, AdamW, linear warm-up then linear decay, gradient
clipping, a progress bar, one JSON line of metrics per logged step. ``mode="full"`` trains every
weight; ``mode="lora"`` trains a peft LoRA on all linear layers and merges it back, so either way
the result is a plain Hugging Face model directory.

Under ``accelerate launch`` each process takes a contiguous slice of every step's rows and the
gradients are summed over processes (:mod:`alter.distributed`): the same steps and the same loss
as one process, one replica (or, under FSDP or DeepSpeed ZeRO, one shard) per process, rank 0
writing. ``mode="lora"`` under FSDP shards the frozen base and keeps the adapters whole on every
process (as the LoRA unlearning baseline does); the merge adds each process's rows of the
adapters' update to its shards.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from alter.data.collate import Collator, encode_rows, to_device
from alter.distributed import (
    Runtime,
    ScaleOptions,
    add_full_,
    clip_grad_norm,
    launch_runtime,
    runtime_for,
)
from alter.ds import start as deepspeed_engine
from alter.losses import mean_token_nll
from alter.models import check_base_dtype, check_trainable_float32, enable_gradient_checkpointing


@dataclass
class FinetuneConfig(ScaleOptions):
    """Hyperparameters of ``alter finetune``."""

    mode: Literal["full", "lora"] = field(
        default="full",
        metadata={"help": "full: every weight; lora: LoRA on all linear layers, merged"},
    )
    epochs: float = field(default=4.0, metadata={"help": "passes over the data"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW)"})
    batch_size: int = field(default=8, metadata={"help": "rows per optimiser step"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps warming up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    max_length: int = field(
        default=256, metadata={"help": "tokens per row (longer rows truncated)"}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (mode=lora)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (mode=lora)"})
    seed: int = field(default=0, metadata={"help": "seed for shuffling and initialisation"})
    log_every: int = field(default=1, metadata={"help": "log metrics every N steps"})
    checkpoint_every: int | None = field(
        default=50, metadata={"help": "save resumable state every N steps (None: never)"}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in ("full", "lora"):
            raise ValueError(f"mode must be 'full' or 'lora', got {self.mode!r}")
        # Both modes change the weights themselves (lora by merging): bfloat16 is refused.
        check_base_dtype(
            self.base_dtype, "finetune" if self.mode == "full" else "finetune --mode lora"
        )
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be > 0, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def finetune(
    model,
    tokenizer,
    rows,
    cfg: FinetuneConfig,
    *,
    log_path: Path | None = None,
    resume_dir: Path | None = None,
    progress: bool = True,
    runtime: Runtime | None = None,
    before_training: Callable[[torch.nn.Module], None] | None = None,
):
    """Train ``model`` on QA/text ``rows`` and return the trained (merged) model.

    ``before_training(model)`` runs once the model is placed for training (under FSDP: sharded,
    so a model loaded into its shards is never whole), before any adapter goes in and before a
    checkpoint is resumed: the untrained model (the caller's first evaluation).

    With ``resume_dir``, resumable state (trainable weights, optimiser, scheduler, RNG, step) is
    saved there every ``cfg.checkpoint_every`` steps, and a run that finds it continues from it
    with the same result as an uninterrupted run. With a distributed ``runtime`` only rank 0
    writes the log and checkpoints.
    """
    from alter.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, truncate_log

    rt = runtime or launch_runtime(cfg.mixed_precision)
    rt = runtime_for(rt, "finetune" if cfg.mode == "full" else "finetune --mode lora")
    if not rt.is_main:
        log_path, progress = None, False
    torch.manual_seed(cfg.seed)
    encoded = encode_rows(rows, tokenizer, max_length=cfg.max_length)
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total)
    # Every step's rows, fixed up front: a resumed run sees the same batches.
    gen = torch.Generator().manual_seed(cfg.seed)
    plan: list[list[int]] = []
    while len(plan) < total:
        order = torch.randperm(len(encoded), generator=gen).tolist()
        plan += [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
    plan = plan[:total]

    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.mode == "lora":
        # FSDP: the frozen base is sharded before the adapters go in; they stay whole on every
        # process, their gradients summed by all_reduce_grads (a no-op otherwise).
        rt.shard_frozen(model)
    else:
        rt.shard(model)  # FSDP: every parameter becomes its shard (a no-op otherwise)
    if before_training is not None:
        before_training(model)
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear")
        model = get_peft_model(model, lora)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    check_trainable_float32(params, "finetune")
    if cfg.mode == "lora":  # a model loaded in bf16 by the caller: the merge would round it away
        base = model.get_base_model().parameters()
        check_trainable_float32(base, "finetune --mode lora", "the weights the update merges into")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, total, warmup))
    collate = Collator(tokenizer.pad_token_id)
    start = 0
    ckpt = latest_checkpoint(resume_dir) if resume_dir else None
    if ckpt is not None:
        tensors, state = load_checkpoint(ckpt, {"main": opt})
        rt.shard_optimizer_state(opt)
        rt.load_params(named, tensors)
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
        if log_path:
            truncate_log(log_path, lambda rec: rec.get("step", 0) <= start)
    # DeepSpeed: the engine takes the (resumed) model and AdamW; it reduces, clips and steps.
    zero = deepspeed_engine(rt, model, named, opt, cfg.grad_accum, cfg.max_grad_norm)

    model.train()
    log = log_path.open("a") if log_path else None
    bar = tqdm(
        total=total, initial=start, desc=f"finetune ({cfg.mode})", disable=not progress, unit="step"
    )
    t0 = time.perf_counter()
    k = cfg.grad_accum
    try:
        for step in range(start, total):
            if zero is None:
                opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            # The rows go in the "forget" slot of a split: there is only one kind here.
            for part in rt.parts(plan[step], [], k):
                batch = to_device(collate([encoded[i] for i in part.forget]), rt.device)
                with rt.step(), rt.autocast(), rt.weighted(part.forget_weight):
                    logits = model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits
                    loss = mean_token_nll(logits, batch["labels"])
                if zero is not None:
                    zero.backward(loss)
                else:
                    (loss / k if k > 1 else loss).backward()
                loss_sum += loss.item() / k if k > 1 else loss.item()
            (loss_value,) = rt.sum([loss_sum])
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step + 1}; lower --lr")
            if zero is None:
                rt.all_reduce_grads(params)
                grad_norm = clip_grad_norm(params, cfg.max_grad_norm)
                opt.step()
            else:  # DeepSpeed reduces, clips and steps (AdamW on its partitions)
                grad_norm = zero.step()
            sched.step()
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if log and (done % cfg.log_every == 0 or done == total):
                rec = {
                    "step": done,
                    "epoch": done / steps_per_epoch,
                    "loss": loss_value,
                    "grad_norm": float(grad_norm),
                    "lr": sched.get_last_lr()[0],
                    "elapsed_s": time.perf_counter() - t0,
                }
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if (
                resume_dir
                and cfg.checkpoint_every
                and done % cfg.checkpoint_every == 0
                and done < total
            ):
                # Every process: under FSDP / DeepSpeed this gathers the shards. Rank 0 writes.
                tensors, opts = (zero or rt).checkpoint_state(named, {"main": opt})
                if rt.is_main:
                    save_checkpoint(
                        resume_dir, done, tensors, opts, {"scheduler": sched.state_dict()}
                    )
    finally:
        bar.close()
        if log:
            log.close()
    model.eval()
    if cfg.mode == "lora":
        model = merge_lora(model, rt)
    return model


def merge_lora(model, rt: Runtime):
    """peft's ``merge_and_unload``: the base model with ``W += B A * scaling`` in every adapted
    layer. Under FSDP the base weights are shards: each process adds its rows of the (whole)
    delta, the update peft makes in place (``weight.data += delta``), then drops the adapters."""
    if rt.fsdp is None:
        return model.merge_and_unload()
    from peft.tuners.lora import LoraLayer
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()  # the sharded parameters registered (a no-op when they are)
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            if name in module.lora_variant or module.lora_bias.get(name):
                raise NotImplementedError("merging a LoRA variant or bias into FSDP shards")
            with torch.no_grad():
                delta = module.get_delta_weight(name)
            add_full_(module.get_base_layer().weight, delta)
    return model.unload()


def save_model(
    model, tokenizer, out: Path, *, config: FinetuneConfig | None = None, extra: dict | None = None
):
    """Save a model directory that :func:`alter.models.load_model` reads back."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    meta = {"finetune_config": asdict(config) if config else None, **(extra or {})}
    (out / "alter_finetune.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")

"""Data parallelism on Hugging Face accelerate: ``accelerate launch ... -m alter.cli unlearn ...``.

Every process runs the same command on the same data and builds the same step plan. A step's
*global batch* (the rows a single-process run gives that step) is cut into ``grad_accum``
contiguous micro-batches, and each micro-batch into one contiguous slice per process
(:func:`split`). Each process computes its slice's **share of the mean over the global
micro-batch**: the loss helpers of :mod:`alter.losses` call :func:`share`, which divides the
local sum by the count summed over processes. The shares add up to the single-process loss, so
summing gradients over processes (:func:`Runtime.all_reduce_grads`) gives the single-process
gradient; clipping and the optimiser step then run identically everywhere and the replicas stay
equal. Only rank 0 writes files.

Why not ``Accelerator.prepare`` (DDP)? DDP averages per-process *means*, which is the global mean
only when every process holds as many supervised tokens; ALTER's forget experts must keep
``grad=None`` on steps that do not use them (AdamW then skips them), which DDP does not
preserve; and the methods keep references to their own modules (peft wrappers, frozen copies,
routing contexts) that a DDP wrapper would hide. The explicit all-reduce is what DDP does
underneath, minus those three differences. FSDP and DeepSpeed shard parameters and need
``prepare``: they are refused for now (see ``docs/SCALING.md``).

A plain ``alter ...`` is one process: :class:`Runtime` defaults to rank 0 of 1 on the CPU,
:func:`sharing` is false and every caller keeps its own single-process expression, so
single-process results do not change by a bit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

from alter.errors import ConfigError

MIXED_PRECISION = ("no", "bf16")
# Launchers set these; a plain `alter ...` has none of them.
LAUNCH_ENV = ("WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_MIXED_PRECISION")
# All-reduce gradients in buckets of at most this many elements (a full 8B model in one flat
# buffer would need another 32 GB).
BUCKET_NUMEL = 1 << 25


def check_mixed_precision(value: str) -> str:
    if value not in MIXED_PRECISION:
        extra = " (fp16 needs loss scaling, which alter does not do: use bf16)" * (value == "fp16")
        raise ValueError(
            f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {value!r}{extra}"
        )
    return value


@dataclass
class ScaleOptions:
    """The scale-out options every training config shares (finetune, the baselines, ALTER);
    each config inherits them and calls ``super().__post_init__()`` to validate them."""

    grad_accum: int = field(
        default=1,
        metadata={
            "help": "micro-batches per step (one backward each): less memory, same step; the "
            "loss is the mean of the micro-batch means"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in backward (less memory, ~1/3 more compute)"},
    )
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "no | bf16 (autocast, for GPUs); None: the accelerate launch setting "
            "(its --mixed_precision or config file), 'no' outside accelerate launch"
        },
    )

    def __post_init__(self) -> None:
        check_scale_options(self)


def check_scale_options(cfg) -> None:
    """Validate the options every training config shares (``ValueError`` with the reason):
    ``grad_accum``, ``gradient_checkpointing``, ``mixed_precision``."""
    if (
        isinstance(cfg.grad_accum, bool)
        or not isinstance(cfg.grad_accum, int)
        or cfg.grad_accum < 1
    ):
        raise ValueError(f"grad_accum must be an integer >= 1, got {cfg.grad_accum!r}")
    if not isinstance(cfg.gradient_checkpointing, bool):
        raise ValueError(
            f"gradient_checkpointing must be true or false, got {cfg.gradient_checkpointing!r}"
        )
    if cfg.mixed_precision is not None:
        check_mixed_precision(cfg.mixed_precision)


def split(rows: Sequence[int], part: int, parts: int) -> list[int]:
    """Contiguous slice ``part`` of ``parts`` of ``rows``; the first ``len % parts`` get one more."""
    q, r = divmod(len(rows), parts)
    start = part * q + min(part, r)
    return list(rows[start : start + q + (part < r)])


@dataclass
class _Share:
    world: int
    weight: float = 1.0


_SHARE: ContextVar[_Share | None] = ContextVar("alter_share", default=None)


def sharing() -> bool:
    """Inside a data-parallel step (:meth:`Runtime.step` with more than one process)."""
    return _SHARE.get() is not None


def share(total: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """This process's share of a mean over the global batch, ``w * total / sum_processes(w *
    count)`` (``w`` = 0 on a stand-in slice, see :meth:`Runtime.parts`); only when
    :func:`sharing` (callers keep their single-process expression otherwise).

    ``count`` is summed with an all-reduce, so every process must call this the same number of
    times per step: true for the methods here, whose loss terms do not depend on the data.
    """
    ctx = _SHARE.get()
    assert ctx is not None, "share() outside a data-parallel step"
    import torch.distributed as dist

    g = torch.as_tensor(count, dtype=torch.float64, device=total.device).detach() * ctx.weight
    dist.all_reduce(g)
    return total * ctx.weight / g.clamp_min(1.0).to(total.dtype)


@dataclass(frozen=True)
class Part:
    """One process's rows of one micro-batch: forget and retain indices and their weights.

    A weight of 0 marks a stand-in: the slice was empty, so the process runs one row of the step
    instead (every process must take part in the same collectives) and its terms count for
    nothing.
    """

    forget: list[int]
    retain: list[int]
    forget_weight: float = 1.0
    retain_weight: float = 1.0


@dataclass(frozen=True)
class Runtime:
    """This process's place in a data-parallel run; the default is a plain single process."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mixed_precision: str = "no"
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # -- splitting a step -------------------------------------------------------------------
    def parts(self, forget: Sequence[int], retain: Sequence[int], grad_accum: int) -> list[Part]:
        """This process's part of every micro-batch of a step (global rows ``forget``, ``retain``).

        Micro-batches are cut from the global batch first, so a run with ``grad_accum = k`` gives
        the same result on any number of processes. An empty slice becomes a weight-0 stand-in.
        """
        out = []
        for m in range(grad_accum):
            f_micro, r_micro = split(forget, m, grad_accum), split(retain, m, grad_accum)
            f, r = split(f_micro, self.rank, self.world), split(r_micro, self.rank, self.world)
            fw, rw = float(bool(f)), float(bool(r) or not retain)
            out.append(Part(f or list(forget[:1]), r or list(retain[:1]), fw, rw))
        return out

    @contextlib.contextmanager
    def step(self):
        """Loss helpers return shares of the global mean (a no-op in a single process)."""
        if not self.distributed:
            yield
            return
        token = _SHARE.set(_Share(self.world))
        try:
            yield
        finally:
            _SHARE.reset(token)

    @contextlib.contextmanager
    def weighted(self, weight: float):
        """Terms computed inside count with ``weight`` (0 on a stand-in slice)."""
        ctx = _SHARE.get()
        if ctx is None:
            yield
            return
        before, ctx.weight = ctx.weight, weight
        try:
            yield
        finally:
            ctx.weight = before

    def autocast(self):
        """bf16 autocast when asked for (accelerate's, i.e. ``torch.autocast``), else nothing."""
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        if self.accelerator is not None:
            return self.accelerator.autocast()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # -- collectives (no-ops in a single process) -------------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over processes."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_gather(self, obj) -> list:
        """Every process's ``obj``, in rank order (picklable objects; tensors on the CPU)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @torch.no_grad()
    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum gradients over processes. A parameter without a gradient on every process keeps
        ``grad=None`` (ALTER's unused forget experts); one with a gradient somewhere gets a zero
        gradient where it had none, so every process steps the same parameters."""
        if not self.distributed:
            return
        import torch.distributed as dist

        has = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.float32, device=self.device
        )
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        live = [p for p, h in zip(params, has.tolist(), strict=True) if h]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets([p.grad for p in live]):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()


def _buckets(grads: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        if bucket and (size + g.numel() > BUCKET_NUMEL or g.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(g)
        size += g.numel()
    if bucket:
        yield bucket


def is_main_process() -> bool:
    """Rank 0, or not launched at all (for messages printed once)."""
    return os.environ.get("RANK", "0") == "0"


def launched() -> bool:
    """Started by ``accelerate launch`` or ``torchrun`` (even with one process)."""
    return any(k in os.environ for k in LAUNCH_ENV)


def _has_accelerator() -> bool:
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return bool(acc.is_available())
    return torch.cuda.is_available()


_RUNTIME: Runtime | None = None


def launch_runtime(mixed_precision: str | None = None) -> Runtime:
    """The process's :class:`Runtime`: rank, world size and device from accelerate when launched,
    else a plain single process on the CPU (as ``alter`` always ran).

    Under a launcher the model goes to accelerate's device (a GPU when there is one); on a machine
    without one the processes run on the CPU and talk over gloo. ``mixed_precision`` None takes
    the launcher's setting. The accelerate state is made once per process.
    """
    global _RUNTIME
    if mixed_precision is None:
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    try:
        check = check_mixed_precision(mixed_precision)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not launched():
        return Runtime(mixed_precision=check)
    if _RUNTIME is not None:
        if _RUNTIME.mixed_precision != check:
            raise ConfigError(
                f"mixed_precision={check} but this process already runs with "
                f"{_RUNTIME.mixed_precision}"
            )
        return _RUNTIME
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    sharded = [
        name
        for name, var in (
            ("FSDP", "ACCELERATE_USE_FSDP"),
            ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"),
        )
        if os.environ.get(var, "").lower() == "true"
    ]
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" or not _has_accelerator()
    acc = None if sharded else Accelerator(cpu=use_cpu, mixed_precision=check)
    if sharded or acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        what = sharded[0] if sharded else acc.distributed_type.value
        raise ConfigError(
            f"{what} is not supported yet: alter's data parallelism keeps one full replica per "
            "process (DDP-style, configs/accelerate/ddp.yaml); FSDP and DeepSpeed ZeRO shard "
            "parameters and need Accelerator.prepare (planned, see docs/SCALING.md)"
        )
    _RUNTIME = Runtime(
        rank=acc.process_index,
        world=acc.num_processes,
        device=acc.device,
        mixed_precision=check,
        accelerator=acc,
    )
    return _RUNTIME


# -- sharded evaluation --------------------------------------------------------------------------

_EVAL: ContextVar[Runtime | None] = ContextVar("alter_eval_shard", default=None)


@contextlib.contextmanager
def sharded_eval(rt: Runtime):
    """Inside: :func:`alter.evals.qa.answer_nll` and ``generate_answers`` give each process a
    contiguous slice of the rows and gather the results on every process (all processes must run
    the same evaluation code)."""
    token = _EVAL.set(rt if rt.distributed else None)
    try:
        yield
    finally:
        _EVAL.reset(token)


def eval_shard() -> Runtime | None:
    return _EVAL.get()


def gather_rows(rt: Runtime, n: int, compute) -> list:
    """Run ``compute(indices)`` on this process's slice of ``range(n)`` and return the results
    of every process in row order (``compute`` returns one picklable value per index)."""
    mine = split(range(n), rt.rank, rt.world)
    local = compute(mine) if mine else []
    out = []
    for part in rt.all_gather(local):
        out.extend(part)
    assert len(out) == n, (len(out), n)
    return out

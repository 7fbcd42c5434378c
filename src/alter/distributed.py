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
underneath, minus those three differences.

**FSDP** (``configs/accelerate/fsdp.yaml``): the same steps, slices and shares, but the model's
parameters, gradients and AdamW state are sharded over the processes by PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``, :meth:`Runtime.shard`): one shard per decoder block and
one for the rest. FSDP all-gathers a block's weights for its forward and backward and
reduce-scatters its gradients; its divide factor is set to 1 with plain ``ReduceOp.SUM``, so the
reduce-scatter **sums** the shares' gradients exactly as :meth:`Runtime.all_reduce_grads` does
(FSDP's default is the average). Clipping and AdamW then run on the shards. Checkpoints and
outputs are gathered to full tensors first (:meth:`Runtime.checkpoint_state`,
:meth:`Runtime.full_state_dict`), so they are the files a single process writes and a run resumes
across strategies and process counts. That covers the full-parameter trainings
(:data:`FULL_FSDP_METHODS`; RMU trains a few of the model's weights, the rest sharded frozen in
the same groups, and its forwards run a truncated block list rather than stopping by an
exception, so every group entered is left). The frozen references of NPO_KL and RMU are sharded
as well (:meth:`Runtime.frozen_copy`: built on the meta device, sharded, then filled, so no
process ever holds a second full copy). The model itself is loaded into its shards the same way
for :data:`LOAD_INTO_SHARDS` (:meth:`Runtime.load_model`): only rank 0 reads the weights, the
other processes build the model on the meta device, and :meth:`Runtime.shard` fills every
process's shards from rank 0's copy by broadcast, one tensor at a time.

For the adapter methods (:data:`ADAPTER_FSDP_METHODS`: ALTER, LoRA, AsymLoRA, ELM and
``finetune --mode lora``) what must be
sharded is the frozen base (a 70B base does not fit one GPU; the adapters are small):
:meth:`Runtime.shard_frozen` freezes and shards the plain model *before* the adapters are
injected (ALTER's number of experts is only known after its base pre-pass, which runs on the
sharded model). The adapter parameters are then ordinary tensors FSDP does not manage, whole on
every process: their gradients are summed by :meth:`Runtime.all_reduce_grads` as in the DDP path
(so ALTER's unused forget experts keep ``grad=None``), and checkpoints and adapter files need no
gather. Every forward all-gathers the base block by block, so **every process runs the same
number of forwards**: training steps already do (an empty slice runs a weight-0 stand-in), setup
passes (ALTER's expert initialisation, NPO references) run every row on every process, and
ALTER's round-robin pre-pass is padded (:meth:`Runtime.forwards`: at most one repeated batch per
process, its result discarded). Measured against one process (2 gloo CPU processes,
``tests/test_distributed.py``): ALTER's adapter within 1.7e-7, LoRA's 3.1e-8, ELM's 1.4e-8.
ELM switches its adapters off for the frozen model's forwards, which changes no FSDP group;
``finetune --mode lora`` merges each process's rows of the adapters' update into its shards
(:func:`add_full_`).

accelerate's own FSDP path (``Accelerator.prepare``) is not used: it averages gradients, needs
the optimiser prepared with the model, and on a machine without GPUs accelerate 1.15 silently
turns an FSDP config into DDP, so it could not be tested here.

**DeepSpeed ZeRO-2/3** (``configs/accelerate/deepspeed_zero{2,3}.yaml``): the full-parameter
trainings (:data:`DEEPSPEED_METHODS`) in a DeepSpeed engine built by :mod:`alter.ds`, gradients
summed, checkpoints in the single-process form; the adapter methods and RMU run on the FSDP path
(ZeRO-3) or the replica path (ZeRO-2) instead, with the memory per process the config asks for
(:func:`runtime_for`).

A plain ``alter ...`` is one process: :class:`Runtime` defaults to rank 0 of 1 on the CPU,
:func:`sharing` is false and every caller keeps its own single-process expression, so
single-process results do not change by a bit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from alter.errors import ConfigError
from alter.models import check_base_dtype

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

    base_dtype: str = field(
        default="float32",
        metadata={
            "help": "float32 | bfloat16: the dtype the base weights are loaded in; bfloat16 only "
            "for adapters on a frozen base (alter, lora, asymlora, elm), which stay float32"
        },
    )

    def __post_init__(self) -> None:
        check_scale_options(self)


def check_scale_options(cfg) -> None:
    """Validate the options every training config shares (``ValueError`` with the reason):
    ``grad_accum``, ``gradient_checkpointing``, ``mixed_precision``, ``base_dtype`` (whether
    the training may use bfloat16 is checked where the training is known:
    :func:`alter.models.check_base_dtype`)."""

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
    check_base_dtype(cfg.base_dtype)


# What FSDP trains: the full-parameter trainings, whose trainable parameters are the model's own
# (all sharded; RMU trains a few of them, the rest sharded frozen), and the adapter methods, whose
# frozen base is sharded before the adapters go in (the adapters stay whole on every process,
# their gradients summed by an explicit all-reduce). NPO_KL's and RMU's frozen references are
# sharded too (:meth:`Runtime.frozen_copy`).
FULL_FSDP_METHODS = ("finetune", "ga", "gd", "npo", "npo_kl", "simnpo", "rmu")
ADAPTER_FSDP_METHODS = ("alter", "lora", "asymlora", "elm", "finetune --mode lora")
FSDP_METHODS = FULL_FSDP_METHODS + ADAPTER_FSDP_METHODS
_NOT_FSDP: dict[str, str] = {}


@dataclass(frozen=True)
class FSDPOptions:
    """What alter reads of an accelerate FSDP config (``fsdp_config:`` in the YAML, which
    ``accelerate launch`` passes on as ``FSDP_*`` environment variables)."""

    reshard_after_forward: bool = True  # False: keep gathered blocks until backward (ZeRO-2-like)
    # Block classes sharded on their own; None: the model's blocks (``_no_split_modules``);
    # (): none, one shard group for the whole model.
    wrap: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls) -> FSDPOptions:
        env = os.environ.get
        problems = []
        if env("FSDP_VERSION", "1") != "2":
            problems.append("fsdp_version must be 2 (alter runs FSDP2, torch's fully_shard)")
        if env("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
            problems.append("fsdp_offload_params is not supported")
        if env("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
            problems.append(
                "fsdp_activation_checkpointing is not read: use alter's gradient_checkpointing "
                "option (--set gradient_checkpointing=true)"
            )
        if env("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true":
            problems.append(
                "fsdp_cpu_ram_efficient_loading must be false (every process loads the model; "
                "with it transformers leaves the weights empty on all but rank 0)"
            )
        if env("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT") != "FULL_STATE_DICT":
            problems.append(
                "fsdp_state_dict_type must be FULL_STATE_DICT (alter writes full models)"
            )
        policy = env("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
        if policy not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
            problems.append(
                f"fsdp_auto_wrap_policy must be TRANSFORMER_BASED_WRAP or NO_WRAP, got {policy}"
            )
        if problems:
            raise ConfigError("FSDP config: " + "; ".join(problems))
        names = tuple(
            n.strip() for n in env("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if n.strip()
        )
        return cls(
            reshard_after_forward=env("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true",
            wrap=() if policy == "NO_WRAP" else (names or None),
        )


# The trainings whose weights nothing reads before :meth:`Runtime.shard` (or ``shard_frozen``)
# fills the shards: under FSDP only rank 0 reads them (:meth:`Runtime.load_model`); NPO's
# reference pass and finetune's first evaluation run on the shards. Not yet NPO_KL and RMU:
# their frozen copies are made from the whole model.
LOAD_INTO_SHARDS = (
    "alter",
    "lora",
    "asymlora",
    "elm",
    "ga",
    "gd",
    "simnpo",
    "npo",
    "finetune",
    "finetune --mode lora",
)


# What the DeepSpeed engine trains: the full-parameter trainings (the engine owns the whole
# model's parameters; alter.ds). The rest (adapters on a frozen base, RMU's few weights) run under
# a DeepSpeed config on alter's own paths with the per-process memory the config asks for
# (:func:`runtime_for`).
DEEPSPEED_METHODS = ("finetune", "ga", "gd", "npo", "npo_kl", "simnpo")


@dataclass(frozen=True)
class DeepSpeedOptions:
    """What alter reads of an accelerate DeepSpeed config (``deepspeed_config:`` in the YAML,
    passed on as ``ACCELERATE_DEEPSPEED_*`` / ``ACCELERATE_GRADIENT_*`` variables). alter builds
    the DeepSpeed config itself (:func:`alter.ds.engine_config`)."""

    stage: int = 2
    grad_accum: int | None = None  # the config's gradient_accumulation_steps
    clipping: float | None = None  # the config's gradient_clipping

    @classmethod
    def from_env(cls) -> DeepSpeedOptions:
        env = os.environ.get
        problems = []
        stage = env("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        if stage not in ("2", "3"):
            problems.append(f"zero_stage must be 2 or 3, got {stage}")
        if env("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
            problems.append(
                "deepspeed_config_file is not read (alter builds the DeepSpeed config from "
                "zero_stage and its own options): use zero_stage in the accelerate config"
            )
        for key in ("OFFLOAD_OPTIMIZER_DEVICE", "OFFLOAD_PARAM_DEVICE"):
            if env(f"ACCELERATE_DEEPSPEED_{key}", "none").lower() != "none":
                problems.append(f"{key.lower()} must be none (offloading is not wired)")
        if env("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false").lower() == "true":
            problems.append(
                "zero3_init_flag must be false (every process loads the whole model, then the "
                "engine partitions it)"
            )
        if importlib.util.find_spec("deepspeed") is None:
            problems.append(
                "deepspeed is not installed: pip install --no-deps --no-build-isolation "
                "deepspeed hjson py-cpuinfo msgpack ninja einops (docs/SCALING.md)"
            )
        if problems:
            raise ConfigError("DeepSpeed config: " + "; ".join(problems))
        accum = env("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
        clip = env("ACCELERATE_GRADIENT_CLIPPING")
        return cls(
            stage=int(stage),
            grad_accum=int(accum) if accum else None,
            clipping=float(clip) if clip and clip != "none" else None,
        )


def check_fsdp(rt: Runtime, what: str) -> None:
    """Refuse, before anything runs, a training FSDP does not cover (``what``: a method name,
    ``finetune`` or ``finetune --mode lora``)."""
    if rt.fsdp is None or what in FSDP_METHODS:
        return
    reason = _NOT_FSDP.get(what, "not wired")
    raise ConfigError(
        f"FSDP runs {', '.join(FULL_FSDP_METHODS)} (full parameters) and "
        f"{', '.join(ADAPTER_FSDP_METHODS)} (sharded base); not {what}: {reason}. Run it "
        "with configs/accelerate/ddp.yaml (one replica per process, every method)"
    )


def runtime_for(rt: Runtime, what: str) -> Runtime:
    """The runtime ``what`` trains with (checked by :func:`check_fsdp` first).

    Under a DeepSpeed config the full-parameter trainings (:data:`DEEPSPEED_METHODS`) get the
    ZeRO engine. The others train a few parameters next to a frozen base: ALTER's experts (the
    engine would give the experts a step does not use a zero gradient, and AdamW would move
    them), the LoRA adapters, RMU's steered MLPs. What ZeRO partitions for them is what they run
    on here, with the same memory per process: under ZeRO-3 the frozen base is sharded by FSDP2
    (alter's FSDP path: the trainable parameters whole on every process, gradients summed);
    under ZeRO-2, which partitions only gradients and optimizer state (for adapters about 1% of
    the model), one replica per process with gradients summed (the DDP path). The
    run's summary records both (``sharding``, ``launch_config``)."""
    check_fsdp(rt, what)
    if rt.deepspeed is None or what in DEEPSPEED_METHODS:
        return rt
    stage = rt.deepspeed.stage
    mapped = replace(
        rt,
        deepspeed=None,
        fsdp=FSDPOptions() if stage == 3 else None,
        launch_config=f"deepspeed_zero{stage}",
    )
    if rt.is_main:
        how = (
            "the frozen base sharded by FSDP2 (what ZeRO-3 partitions), the trainable parameters "
            "whole on every process"
            if stage == 3
            else "one replica per process (ZeRO-2 would partition only its gradients and "
            "optimizer state, about 1% of the model)"
        )
        warnings.warn(
            f"DeepSpeed ZeRO-{stage} config: the engine trains {', '.join(DEEPSPEED_METHODS)}; "
            f"{what} trains with {how}, gradients summed (docs/SCALING.md)",
            UserWarning,
            stacklevel=2,
        )
    return mapped


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
    fsdp: FSDPOptions | None = None  # set: parameters sharded with FSDP2 (see the module doc)
    deepspeed: DeepSpeedOptions | None = None  # set: a DeepSpeed ZeRO engine trains (alter.ds)
    # Set when a DeepSpeed config was mapped to alter's own path (:func:`runtime_for`).
    launch_config: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def sharding(self) -> dict:
        """What a run summary records of the sharding (nothing for replicas)."""
        launched = {"launch_config": self.launch_config} if self.launch_config else {}
        if self.fsdp is not None:
            return {"sharding": "fsdp", **launched}
        if self.deepspeed is not None:
            return {"sharding": f"deepspeed_zero{self.deepspeed.stage}"}
        return launched

    @property
    def shards_parameters(self) -> bool:
        """Parameters are partitioned (FSDP, ZeRO-3): every forward is a collective, so every
        process must run the same forwards (no sharded evaluation)."""
        return self.fsdp is not None or (self.deepspeed is not None and self.deepspeed.stage == 3)

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
        gradient where it had none, so every process steps the same parameters. Under FSDP only
        the parameters FSDP does not manage (adapters injected into a sharded base): backward
        has reduce-scattered (summed) the sharded ones already."""
        if not self.distributed:
            return
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        if self.fsdp is not None:
            params = [p for p in params if not isinstance(p, DTensor)]
            if not params:  # the same on every process: all parameters sharded
                return

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

    # -- FSDP (no-ops without it) ------------------------------------------------------------
    def shard(self, model: torch.nn.Module, reshard_after_forward: bool | None = None) -> None:
        """Shard ``model`` in place with FSDP2: each block (see :class:`FSDPOptions`), then the
        rest. Every parameter becomes a DTensor shard (build the optimiser afterwards); module
        objects stay the same, so a method's references to them keep working.
        ``reshard_after_forward`` None: the config's ``fsdp_reshard_after_forward``."""
        if self.fsdp is None:
            return
        # A model loaded into its shards (:meth:`load_model`): every process shards it on the
        # meta device, then fills its shards from rank 0's weights.
        weights = self._rank0_weights(model)
        self._fully_shard(model, reshard_after_forward)
        if weights is not None:
            self._fill(model, self._broadcast_from_rank0(weights))

    def _fully_shard(self, model: torch.nn.Module, reshard_after_forward: bool | None) -> None:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        names = self.fsdp.wrap
        if names is None:
            names = tuple(getattr(model, "_no_split_modules", None) or ())
        blocks = [m for m in model.modules() if type(m).__name__ in names]
        if names and not blocks:
            raise ConfigError(
                f"FSDP: no module of class {', '.join(names)} in {type(model).__name__} "
                "(fsdp_transformer_layer_cls_to_wrap)"
            )
        if reshard_after_forward is None:
            reshard_after_forward = self.fsdp.reshard_after_forward
        for module in (*blocks, model):
            fully_shard(module, reshard_after_forward=reshard_after_forward)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                # Sum the shares' gradients (FSDP averages by default), with a plain SUM
                # reduce-scatter: gloo has no PREMUL_SUM, and a factor of 1 divides nothing.
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)

    def shard_frozen(self, model: torch.nn.Module) -> None:
        """For the adapter methods: freeze every parameter of the base ``model``, then shard it
        (:meth:`shard`). Adapters injected afterwards are ordinary tensors FSDP does not manage:
        whole on every process, their gradients summed by :meth:`all_reduce_grads`. Frozen first,
        so the weights FSDP gathers never ask for a gradient. A no-op without FSDP."""
        if self.fsdp is None:
            return
        for p in model.parameters():
            p.requires_grad_(False)
        self.shard(model)

    def frozen_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen copy of ``model`` in eval mode (NPO_KL's and RMU's reference). Under FSDP it
        is sharded and never whole: built on the meta device, sharded (the groups of
        :meth:`shard`, resharded after every forward since it never runs a backward), then each
        process fills its shards from ``model``'s weights (gathered first when ``model`` is
        itself sharded: a collective). So a process holds 1/N of the reference, and no second
        full copy at any time. Every forward of it is a collective: every process must run the
        same ones. Without FSDP, ``copy.deepcopy``."""
        import copy

        if self.fsdp is None:
            ref = copy.deepcopy(model)
        else:
            # The copy's parameters on the meta device (no memory); ties stay ties (one memo
            # entry per parameter object), buffers (rotary frequencies) are copied.
            memo = {
                id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
                for p in model.parameters()
            }
            ref = copy.deepcopy(model, memo)
            self._fully_shard(ref, reshard_after_forward=True)
            source = dict(model.named_parameters()) | dict(model.named_buffers())
            self._fill(ref, lambda name, _like: _full(source[name].detach()))
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    @torch.no_grad()
    def _fill(self, module: torch.nn.Module, full_of) -> None:
        """Give ``module``, sharded on the meta device, storage (``to_empty``) and values: each
        parameter's shard and each buffer from ``full_of(name, tensor)``, that tensor whole. One
        whole tensor at a time, so a process holds at most one besides its shards."""
        module.to_empty(device=self.device)
        for name, p in module.named_parameters():
            p.copy_(_local(full_of(name, p), p))
        for name, b in module.named_buffers():
            b.copy_(full_of(name, b))

    def _rank0_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """None when every process holds ``model`` whole. When the others hold it on the meta
        device (:meth:`load_model`): rank 0's weights by name (``{}`` on the others), and
        ``model`` is left on the meta device on rank 0 too. A collective (one flag)."""
        if not self.distributed:
            return None
        import torch.distributed as dist

        tensors = [*model.parameters(), *model.buffers()]
        meta = torch.tensor([float(any(t.is_meta for t in tensors))], device=self.device)
        dist.all_reduce(meta, op=dist.ReduceOp.MAX)
        if not meta.item():
            return None
        if not self.is_main:
            return {}
        if any(t.is_meta for t in tensors):
            raise RuntimeError("loading into shards: rank 0 holds no weights to send")
        return _to_meta_(model)

    def _broadcast_from_rank0(self, weights: dict[str, torch.Tensor]):
        """A ``full_of`` for :meth:`_fill`: rank 0 sends each of ``weights`` in turn (and drops
        it: its shards are the model), the others receive it."""
        import torch.distributed as dist

        def full_of(name: str, like: torch.Tensor) -> torch.Tensor:
            if self.is_main:
                t = weights.pop(name).to(self.device)
            else:
                t = torch.empty(like.shape, dtype=like.dtype, device=self.device)
            dist.broadcast(t, src=0)
            return t

        return full_of

    def loads_into_shards(self, what: str) -> bool:
        """Whether :meth:`load_model` reads the weights on rank 0 only for training ``what``."""
        return self.fsdp is not None and self.distributed and what in LOAD_INTO_SHARDS

    def load_model(
        self, name: str, what: str, *, dtype: torch.dtype, seed: int = 0
    ) -> tuple[torch.nn.Module, Any, dict]:
        """:func:`alter.models.load_model` for training ``what``, and what a run summary records
        of the loading. Under FSDP, for :data:`LOAD_INTO_SHARDS`, only rank 0 reads the weights:
        the other processes build the model on the meta device (no storage), and
        :meth:`shard` fills every process's shards from rank 0's copy, which it then drops. The
        summary gets ``loaded_weights_bytes_per_process`` (the parameter and buffer bytes each
        process holds for real after loading; a collective) under FSDP, nothing otherwise."""
        from alter.models import load_model

        meta = self.loads_into_shards(what) and not self.is_main
        model, tok = load_model(name, dtype=dtype, seed=seed, meta=meta)
        if self.fsdp is None:
            return model, tok, {}
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        held = sum(t.numel() * t.element_size() for t in tensors.values() if not t.is_meta)
        loading = {
            "weights_loaded_by": "rank0" if self.loads_into_shards(what) else "every process",
            "loaded_weights_bytes_per_process": self.all_gather(held),
        }
        return model, tok, loading

    def forwards(self, items: Sequence) -> list[tuple[Any, bool]]:
        """Round-robin share of ``items`` (``items[rank::world]``) as ``(item, keep)`` pairs.
        Under FSDP every process runs as many forwards (each all-gathers the weights block by
        block), so the shorter shares are padded with ``items[0]``, marked ``keep=False``: run
        it and discard the result. At most one extra forward per process."""
        mine = [(x, True) for x in items[self.rank :: self.world]]
        if self.fsdp is not None and items:
            mine += [(items[0], False)] * (-(-len(items) // self.world) - len(mine))
        return mine

    @torch.no_grad()
    def checkpoint_state(
        self, named: dict[str, torch.nn.Parameter], optimizers: dict[str, torch.optim.Optimizer]
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """What :func:`alter.checkpoint.save_checkpoint` takes, in the single-process form: under
        FSDP the shards are gathered to full CPU tensors (every process must call this; only
        rank 0 writes), else ``named`` and ``optimizers`` themselves."""
        if self.fsdp is None:
            return dict(named), optimizers
        tensors = {n: _full(p).cpu() for n, p in named.items()}
        states = {}
        for key, opt in optimizers.items():
            sd = opt.state_dict()
            sd["state"] = {
                i: {k: _full(v).cpu() if torch.is_tensor(v) else v for k, v in st.items()}
                for i, st in sd["state"].items()
            }
            states[key] = _GatheredOptimizer(sd)
        return tensors, states

    @torch.no_grad()
    def load_params(
        self, named: dict[str, torch.nn.Parameter], tensors: dict[str, torch.Tensor]
    ) -> None:
        """Copy full tensors (a checkpoint's) into the parameters, each process its shard."""
        for name, p in named.items():
            p.copy_(_local(tensors[name], p))

    def shard_optimizer_state(self, opt: torch.optim.Optimizer) -> None:
        """After ``opt.load_state_dict`` of a full (single-process form) state: cut the
        parameter-shaped tensors to this process's shards."""
        if self.fsdp is None:
            return
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state.get(p, {})
                for k, v in state.items():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        state[k] = _local(v, p)

    @contextlib.contextmanager
    def full_state_dict(self, model: torch.nn.Module):
        """Inside, ``model.state_dict()`` returns full CPU tensors on rank 0, so the usual
        ``save_pretrained`` writes the files a single process writes. Under FSDP the gather
        (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``) is a collective:
        every process enters. Under ZeRO-3 the parameters are gathered whole on every process
        inside (``deepspeed.zero.GatheredParameters``, also a collective). A no-op otherwise."""
        if self.deepspeed is not None:
            from alter.ds import gathered

            with gathered(model, self.deepspeed.stage):
                yield
            return
        if self.fsdp is None:
            yield
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.is_main:
            # Tied weights (embeddings and LM head) come back as two tensors: make them one
            # again, as in a plain model's state dict, so save_pretrained drops the alias.
            first: dict[int, str] = {}
            for name, p in model.named_parameters(remove_duplicate=False):
                kept = first.setdefault(id(p), name)
                if kept != name and kept in full and name in full:
                    full[name] = full[kept]

        def swap(_module, state_dict, prefix, _meta):
            for k in state_dict:
                if k in full:
                    state_dict[k] = full[k]

        handle = model.register_state_dict_post_hook(swap)
        try:
            yield
        finally:
            handle.remove()


@dataclass
class _GatheredOptimizer:
    """A gathered optimiser state where ``save_checkpoint`` expects an optimiser."""

    state: dict

    def state_dict(self) -> dict:
        return self.state


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _to_meta_(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Swap every parameter and buffer of ``model`` for a meta tensor in place (ties stay ties:
    one meta tensor per tensor object; ``requires_grad`` kept) and return the real ones by name,
    each tied tensor once under its first name (as ``named_parameters`` lists it)."""
    real = dict(model.named_parameters()) | dict(model.named_buffers())
    memo: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for key, p in module._parameters.items():
            if p is not None:
                empty = torch.empty_like(p, device="meta")
                new = torch.nn.Parameter(empty, requires_grad=p.requires_grad)
                module._parameters[key] = memo.setdefault(id(p), new)
        for key, b in module._buffers.items():
            if b is not None:
                module._buffers[key] = memo.setdefault(id(b), torch.empty_like(b, device="meta"))
    return real


def unsharded_class(cls: type) -> type:
    """The class FSDP2 subclassed when it sharded a module of class ``cls`` (``cls`` itself
    for a module it did not shard)."""
    from torch.distributed.fsdp import FSDPModule

    if issubclass(cls, FSDPModule):
        return next(b for b in cls.__bases__ if b is not FSDPModule)
    return cls


def add_full_(param: torch.Tensor, full: torch.Tensor) -> None:
    """``param += full`` in place, ``full`` a whole tensor: when ``param`` is an FSDP shard, its
    rows of ``full`` (every process has ``full``, so nothing is sent)."""
    with torch.no_grad():
        param.add_(_local(full.detach(), param))


def local_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters this process holds (its shards under FSDP; each tied
    parameter once)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in module.parameters():
        t = p.to_local() if isinstance(p, DTensor) else p
        total += t.numel() * t.element_size()
    return total


def lazy_init(model: torch.nn.Module) -> None:
    """Let FSDP find every group of ``model`` now, as its first forward would. FSDP2 collects the
    groups under the root at the root's first forward; a forward through a truncated block list
    (RMU) must not be the first, or the blocks left out would be missing from the root's
    bookkeeping. A no-op on a model FSDP did not shard (or already initialised)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()  # FSDP2 has no public call for it (torch 2.13)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole of ``t``: gathered when it is an FSDP shard (a collective: every process calls
    it for the same tensors, in the same order), else ``t`` itself."""
    return _full(t)


def leading_values(tensors: Sequence[torch.Tensor], n: int) -> list[torch.Tensor]:
    """The first ``n`` values of each flattened tensor. An FSDP shard (``Shard(0)``, rank ``i``
    holding the ``i``-th block of rows) holds a piece of them: every process's first ``n`` local
    values are gathered (one ``all_gather_object``; every process must call this) and joined in
    rank order, so only ``n`` values per tensor and process move."""
    from torch.distributed.tensor import DTensor, Shard

    sharded = [isinstance(t, DTensor) for t in tensors]
    if not any(sharded):
        return [t.flatten()[:n] for t in tensors]
    import torch.distributed as dist

    local = [
        (t.to_local() if s else t).detach().flatten()[:n].cpu()
        for t, s in zip(tensors, sharded, strict=True)
    ]
    for t in tensors:
        if isinstance(t, DTensor):
            assert t.placements == (Shard(0),), t.placements
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [torch.cat([p[i] for p in parts])[:n] if s else local[i] for i, s in enumerate(sharded)]


def _local(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` as ``like`` holds it: this process's shard when ``like`` is a DTensor (every
    process has the full tensor, so nothing is sent)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full
    full = full.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``; the total norm as a plain tensor (under FSDP the
    norm of the sharded gradients is a DTensor)."""
    return _full(torch.nn.utils.clip_grad_norm_(params, max_norm))


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

    deepspeed = None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        deepspeed = DeepSpeedOptions.from_env()
    fsdp = None
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        fsdp = FSDPOptions.from_env()
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" or not _has_accelerator()
    # accelerate gives the process state (rank, device, process group); alter shards the model
    # itself with FSDP2 (Runtime.shard) or hands it to a DeepSpeed engine (alter.ds) rather
    # than going through Accelerator.prepare.
    acc = Accelerator(cpu=use_cpu, mixed_precision=check)
    _RUNTIME = Runtime(
        rank=acc.process_index,
        world=acc.num_processes,
        device=acc.device,
        mixed_precision=check,
        # Under DeepSpeed accelerate's autocast is not the plain one (it expects its own engine):
        # alter's bf16 is torch.autocast there (Runtime.autocast without an accelerator).
        accelerator=acc if deepspeed is None else None,
        fsdp=fsdp,
        deepspeed=deepspeed,
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

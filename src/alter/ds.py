"""DeepSpeed ZeRO-2 and ZeRO-3 for the full-parameter trainings (``deepspeed_zero{2,3}.yaml``).

``accelerate launch`` with a DeepSpeed config gives alter the process group (accelerate's state,
gloo on a CPU machine); alter builds the DeepSpeed config itself (:func:`engine_config`) and
calls ``deepspeed.initialize`` on the model with its own torch AdamW as the client optimizer
(ZeRO steps it on flat fp32 partitions: element-wise the same AdamW). The steps, slices and
shares are those of :mod:`alter.distributed`; what changes is who reduces, clips and steps:

* **Gradients are summed, not averaged.** Each process's loss is its *share* of the global-batch
  mean, so the single-process gradient is the **sum** over processes. ZeRO-2: DeepSpeed's
  ``gradient_allreduce_op: sum`` (a plain all-reduce/reduce, nothing divided: exact). ZeRO-3
  refuses that option (DeepSpeed 0.19: "not supported with ZeRO stage 3") and always divides
  the gradients by the number of processes before reducing, so each backward runs on
  ``world x share``: for a power-of-two number of processes both the multiplication and
  DeepSpeed's division are exact, so the reduced gradient is the sum bit for bit; otherwise
  each gradient element is rounded twice (1 ulp). ``gradient_predivide_factor`` cannot express
  a sum: DeepSpeed divides by it before the reduction and multiplies by ``factor / world``
  after, which nets ``1 / world`` whatever the factor.
* **Gradient accumulation** is DeepSpeed's: ``gradient_accumulation_steps`` is alter's
  ``grad_accum`` (``engine.backward`` divides by it, as alter's loops divide by ``grad_accum``),
  ``engine.step()`` runs after every micro-batch and steps at the last.
* **Clipping** is DeepSpeed's (``gradient_clipping`` = ``max_grad_norm``: the coefficient of
  ``torch.nn.utils.clip_grad_norm_``); the logged ``grad_norm`` is the engine's global norm
  before clipping. A non-finite norm makes DeepSpeed skip the step; alter then stops the run.
* **Checkpoints are the single-process files**: the full fp32 weights and AdamW moments are
  assembled from the partitions (``deepspeed.utils.safe_get_full_fp32_param`` and
  ``safe_get_full_optimizer_state``, collectives) and keyed as ``optimizer.state_dict()`` keys
  them, so a ZeRO run resumes on any strategy and number of processes and vice versa. On
  resume the checkpoint is loaded into the plain model and AdamW first; the engine then
  partitions the weights, and the moments are cut into the partitions
  (``safe_set_full_optimizer_state``).
* **Outputs**: under ZeRO-2 the parameters are whole on every process after each step, so the
  usual ``save_pretrained`` writes them; under ZeRO-3 they are gathered first
  (``deepspeed.zero.GatheredParameters``), see :meth:`alter.distributed.Runtime.full_state_dict`.

The methods call their model (``model(...)``); :func:`_route_calls` sends those calls through the
engine's forward, which keeps DeepSpeed's micro-batch bookkeeping.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alter.distributed import DeepSpeedOptions, Runtime
from alter.errors import ConfigError


def _no_shm_comm_build() -> None:
    """On a CPU machine DeepSpeed's communication backend JIT-compiles a shared-memory all-reduce
    (``deepspeed_shm_comm``, ~45 s with a C++ compiler, once per machine) that only its
    inference all-reduce uses; ZeRO's collectives go through torch.distributed (gloo). Mark it
    unavailable so a CPU run neither needs a compiler nor waits for it (GPU runs do not build it)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def engine_config(ds: DeepSpeedOptions, world: int, grad_accum: int, max_grad_norm: float) -> dict:
    """The DeepSpeed config alter runs (fp32 weights; bf16 is alter's autocast, as elsewhere)."""
    if ds.grad_accum not in (None, 1, grad_accum):
        raise ConfigError(
            f"DeepSpeed config: gradient_accumulation_steps={ds.grad_accum} but alter's "
            f"grad_accum={grad_accum}: alter cuts each step into grad_accum micro-batches and "
            "hands that number to DeepSpeed; set grad_accum (--set grad_accum=N, finetune: "
            "--grad-accum N) and leave the config at 1, or make them equal"
        )
    if ds.clipping is not None and not math.isclose(ds.clipping, max_grad_norm):
        raise ConfigError(
            f"DeepSpeed config: gradient_clipping={ds.clipping} but alter's max_grad_norm="
            f"{max_grad_norm}: alter hands max_grad_norm to DeepSpeed; make them equal"
        )
    zero: dict = {"stage": ds.stage, "overlap_comm": False, "contiguous_gradients": True}
    cfg = {
        "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: alter batches the rows
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": grad_accum * world,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if ds.stage == 2:
        cfg["gradient_allreduce_op"] = "sum"
    return cfg


@dataclass
class _GatheredOptimizer:
    state: dict

    def state_dict(self) -> dict:
        return self.state


class Zero:
    """A DeepSpeed engine around ``model`` and its AdamW ``opt`` (see the module doc).

    Build it after ``opt`` exists and, on resume, after the checkpoint was loaded into ``model``
    and ``opt`` (:func:`alter.checkpoint.load_checkpoint` and ``rt.load_params``)."""

    def __init__(
        self,
        rt: Runtime,
        model: torch.nn.Module,
        named: dict[str, torch.nn.Parameter],
        opt: torch.optim.Optimizer,
        grad_accum: int,
        max_grad_norm: float,
    ) -> None:
        import deepspeed

        _no_shm_comm_build()
        assert rt.deepspeed is not None
        self.rt, self.stage, self.names = rt, rt.deepspeed.stage, list(named)
        params = list(named.values())
        # The single-process optimizer.state_dict() layout: parameter indices, hyperparameters.
        self._groups = opt.state_dict()["param_groups"]
        loaded = [opt.state.pop(p, None) for p in params]  # a checkpoint's AdamW moments
        opt.state.clear()
        config = engine_config(rt.deepspeed, rt.world, grad_accum, max_grad_norm)
        self.engine, self.opt, _, _ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=opt, config=config
        )
        _route_calls(model, self.engine)
        self.basic = opt  # ZeRO's inner optimizer: AdamW over the flat fp32 partitions
        self.params = params
        # ZeRO-3 divides the reduced gradients by the number of processes: undo it (above).
        self.scale = rt.world if self.stage == 3 else 1
        self.k = grad_accum
        self.micro = 0
        if any(s is not None for s in loaded):
            self._load_optimizer_state(loaded)

    # -- a training step ---------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """One micro-batch's backward (DeepSpeed divides by ``grad_accum``); ``engine.step()``
        after each but the last (DeepSpeed counts micro-batches there)."""
        self.engine.backward(loss * self.scale if self.scale != 1 else loss)
        self.micro += 1
        if self.micro < self.k:
            self.engine.step()

    def step(self) -> torch.Tensor:
        """Reduce, clip and step; the global gradient norm before clipping."""
        assert self.micro == self.k, (self.micro, self.k)
        self.micro = 0
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return torch.as_tensor(float("nan") if norm is None else float(norm))

    # -- checkpoints in the single-process form ----------------------------------------------
    def _flats(self) -> list[torch.Tensor]:
        o = self.engine.optimizer
        if self.stage == 3:
            return list(o.fp32_partitioned_groups_flat)
        return list(o.single_partition_of_fp32_groups)

    def _shape(self, p: torch.nn.Parameter) -> torch.Size:
        return p.ds_shape if self.stage == 3 else p.shape

    @torch.no_grad()
    def checkpoint_state(
        self, named: dict[str, torch.nn.Parameter], optimizers: dict[str, torch.optim.Optimizer]
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """Full fp32 weights and AdamW state, as one process saves them (every process must
        call this: the partitions are gathered; only rank 0 writes)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        assert list(optimizers) == ["main"] and list(named) == self.names
        tensors = {
            n: safe_get_full_fp32_param(p).reshape(self._shape(p)).cpu() for n, p in named.items()
        }
        flat_state = self.basic.state[self._flats()[0]]
        keys = [k for k, v in flat_state.items() if torch.is_tensor(v) and v.dim() > 0]
        state = {}
        for i, p in enumerate(named.values()):
            st = {}
            for k, v in flat_state.items():
                if k in keys:
                    full = safe_get_full_optimizer_state(p, k)
                    st[k] = full.reshape(self._shape(p)).cpu()
                else:
                    st[k] = v.clone() if torch.is_tensor(v) else v
            state[i] = st
        live = {k: v for k, v in self.basic.param_groups[0].items() if k != "params"}
        groups = [{**g, **live, "params": g["params"]} for g in self._groups]
        return tensors, {"main": _GatheredOptimizer({"state": state, "param_groups": groups})}

    @torch.no_grad()
    def _load_optimizer_state(self, loaded: Sequence[dict | None]) -> None:
        """Cut a single-process AdamW state (one dict per parameter) into the partitions."""
        from deepspeed.utils import safe_set_full_optimizer_state

        if any(s is None for s in loaded):
            raise ConfigError("checkpoint: AdamW state missing for some parameters")
        first = loaded[0]
        keys = [k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0]
        for flat in self._flats():
            st = {}
            for k, v in first.items():
                st[k] = (
                    torch.zeros_like(flat)
                    if k in keys
                    else (v.clone() if torch.is_tensor(v) else v)
                )
            self.basic.state[flat] = st
        if self.stage != 3:  # link each parameter's fragment to the new flat moments
            o = self.engine.optimizer
            o._hp_optimizer_states_linked = False
            o._lazy_init_hp_params_optimizer_state()
        for p, st in zip(self.params, loaded, strict=True):
            for k in keys:
                safe_set_full_optimizer_state(p, st[k].to(torch.float32), k)


def _route_calls(model: torch.nn.Module, engine) -> None:
    """Make ``model(...)`` run ``engine(...)``: the methods call their model, and the engine's
    forward keeps DeepSpeed's per-micro-batch bookkeeping (without it ZeRO-3 counts no
    micro-batch, so gradient accumulation keeps only the last micro-batch's gradients; measured:
    gradient norms halved with grad_accum 2). The model's class is swapped for a subclass of the
    same name (``save_pretrained`` records the class name) whose ``__call__`` goes through the
    engine once; the engine calls the model back, which then runs as a plain module."""
    cls = type(model)
    state = {"inside": False}

    def __call__(self, *args, **kwargs):
        if state["inside"]:
            return super(routed, self).__call__(*args, **kwargs)
        state["inside"] = True
        try:
            return engine(*args, **kwargs)
        finally:
            state["inside"] = False

    routed = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    routed.__qualname__ = cls.__qualname__
    model.__class__ = routed


@contextlib.contextmanager
def gathered(model: torch.nn.Module, stage: int):
    """ZeRO-3: every parameter whole inside (a collective: every process enters)."""
    if stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def start(
    rt: Runtime,
    model: torch.nn.Module,
    named: dict[str, torch.nn.Parameter],
    opt: torch.optim.Optimizer,
    grad_accum: int,
    max_grad_norm: float,
) -> Zero | None:
    """A :class:`Zero` engine under a DeepSpeed config, else None (the loops' own steps)."""
    if rt.deepspeed is None:
        return None
    return Zero(rt, model, named, opt, grad_accum, max_grad_norm)

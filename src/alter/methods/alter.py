"""ALTER (AAAI 2026): asymmetric LoRA + token-entropy guidance, two stages.

Design decisions are those of ``ALTER_SPEC.md``; the loss, written out:

Stage I (entropy capture), on retain data, 1 epoch, trains ``A`` (lr 1e-5) and a temporary ``B``
(lr 1e-3) that becomes ``B_r``::

    L_I = mean_{t in high(R)} NLL_t

Stage II (asymmetric unlearning), batches of 4 forget rows from one subdomain ``d`` + 4 retain rows::

    L = beta * mean_{t in low(F_d)} IHL_t  +  gamma * mean_{t in R} NLL_t
        + lambda * mean_{t in high(F_d)} |S_qA(p_theta,t) - S_qA(p_base,t)|  +  mu * L_router

with strict gradient isolation: the forget pass runs only ``B_f[d]`` (oracle routing) and a
detached ``B_r``; the retain pass runs only ``B_r``; ``A`` receives gradient only through
high-entropy positions; the router is trained by cross-entropy on detached base features
(label 0 for retain tokens, ``d + 1`` for forget tokens of subdomain ``d``).

Token entropy is the frozen base model's, computed once for the training rows (a no-grad
pre-pass) together with the routing layer's hidden states.

Under ``accelerate launch`` (:mod:`alter.distributed`) the pre-pass is split by batches over the
processes and gathered, so every process holds the same cache, bit for bit the single-process
one (the same batches run through the same model); clustering, threshold and initialisation are
then computed by every process from it, identically. Each step's rows are split over the
processes, the loss terms are shares of the global-batch means, gradients are summed: routing
and gradient isolation are those of a single process.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from alter.adapters.config import AlterConfig
from alter.adapters.layer import AlterLinear, Route
from alter.adapters.model import AlterModel, count_adapter_parameters, num_layers, target_names
from alter.adapters.router import router_features
from alter.data.collate import IGNORE_INDEX, Collator, Encoded, encode_rows, to_device
from alter.distributed import Runtime, ScaleOptions, full_tensor, launch_runtime, runtime_for
from alter.entropy import adaptive_threshold, tsallis_entropy
from alter.errors import ConfigError
from alter.losses import (
    at_positions,
    inverse_hinge,
    masked_mean,
    router_cross_entropy,
    structural_invariance,
    token_kl,
    token_nll,
)


@dataclass
class AlterTrainConfig(ScaleOptions):
    """Training hyperparameters of ALTER (spec defaults)."""

    epochs: float = field(default=3.0, metadata={"help": "Stage II passes over the forget set"})
    max_steps: int | None = field(default=None, metadata={"help": "cap Stage II steps"})
    stage1_epochs: float = field(
        default=1.0, metadata={"help": "Stage I passes over the retain set"}
    )
    stage1_max_steps: int | None = field(default=None, metadata={"help": "cap Stage I steps"})
    forget_batch_size: int = field(
        default=4, metadata={"help": "forget rows per step (one subdomain)"}
    )
    retain_batch_size: int = field(default=4, metadata={"help": "retain rows per step"})
    lr_A: float = field(default=1e-5, metadata={"help": "learning rate of the shared A"})
    lr_B: float = field(default=1e-3, metadata={"help": "learning rate of B_r and B_f"})
    lr_router: float = field(default=1e-3, metadata={"help": "learning rate of the router"})
    expert_lr_total: float | None = field(
        default=None,
        metadata={
            "help": "each forget expert's learning rate = this / the Stage II steps it gets, so "
            "every expert moves about as far however many experts share the steps (AdamW moves "
            "a weight about lr per step; our addition; None: lr_B for every expert; 0.025 = "
            "lr_B 1e-3 at 25 steps; measured in docs/ALTER.md)"
        },
    )
    router_fit_steps: int = field(
        default=0,
        metadata={
            "help": "full-batch steps fitting the router's cross-entropy on the cached pre-pass "
            "features before Stage II (0: centroid init only, as the spec; 200 measured in "
            "docs/ALTER.md)"
        },
    )
    beta: float = field(default=1.0, metadata={"help": "weight of the forget IHL term"})
    gamma: float = field(default=1.0, metadata={"help": "weight of the retain NLL term"})
    retain_kl: float = field(
        default=0.0,
        metadata={
            "help": "weight of KL(p_base || p_theta) on the retain answers' tokens (our addition; "
            "0: the spec's retain NLL only; costs one no-grad base forward per retain batch; "
            "measured in docs/ALTER.md)"
        },
    )
    lam: float = field(default=0.01, metadata={"help": "lambda: weight of L_struct"})
    mu: float = field(default=1.0, metadata={"help": "weight of the router cross-entropy"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip norm, per parameter group"})
    max_length: int = field(default=256, metadata={"help": "tokens per row"})
    n_subdomains: int | None = field(
        default=None,
        metadata={"help": "k for k-means when rows carry no subdomain (None: silhouette)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of batching and clustering"})
    checkpoint_every: int | None = field(
        default=50,
        metadata={
            "help": "every N Stage II steps: adapter snapshot (checkpoints/step-N) + resumable state"
        },
    )
    prepass_batch_size: int = field(
        default=8,
        metadata={
            "help": "rows per forward of the base pre-pass (its peak is rows x tokens x vocab "
            "logits; see docs/SCALING.md)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.prepass_batch_size < 1:
            raise ValueError(f"prepass_batch_size must be >= 1, got {self.prepass_batch_size}")
        for name in ("epochs", "lr_A", "lr_B", "lr_router"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.stage1_epochs < 0:
            raise ValueError(f"stage1_epochs must be >= 0, got {self.stage1_epochs}")
        for name in ("forget_batch_size", "retain_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.expert_lr_total is not None and self.expert_lr_total <= 0:
            raise ValueError(f"expert_lr_total must be > 0, got {self.expert_lr_total}")
        if self.router_fit_steps < 0:
            raise ValueError(f"router_fit_steps must be >= 0, got {self.router_fit_steps}")
        for name in ("max_steps", "stage1_max_steps", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for name in ("beta", "gamma", "retain_kl", "lam", "mu"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_subdomains is not None and self.n_subdomains < 1:
            raise ValueError(f"n_subdomains must be >= 1, got {self.n_subdomains}")


# -- base pre-pass over the training rows -----------------------------------------------------


@dataclass
class RowCache:
    """Base-model quantities of one encoded row: entropy at q, at q_struct, routing hidden state."""

    entropy: torch.Tensor  # (T,)
    struct: torch.Tensor  # (T,)
    hidden: torch.Tensor  # (T, H)


@torch.no_grad()
def base_cache(
    model,
    encoded: list[Encoded],
    pad_id: int,
    *,
    layer: int,
    q: float,
    q_struct: float,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "base pre-pass",
    runtime: Runtime | None = None,
) -> list[RowCache]:
    """Run the frozen base model once over ``encoded`` rows; the cache is kept on the CPU.

    With several processes, batch ``b`` (rows sorted by length) runs on process ``b % world``
    and the caches are gathered: every process ends with the whole cache, equal to the
    single-process one (same batches, same model). Under FSDP a process with one batch fewer
    runs the first (shortest) batch again and discards it (:meth:`Runtime.forwards`).
    """
    rt = runtime or Runtime()
    collate = Collator(pad_id)
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    starts = rt.forwards(range(0, len(order), batch_size))
    local: dict[int, RowCache] = {}
    for s, keep in tqdm(starts, desc=desc, disable=not progress, leave=False):
        idx = order[s : s + batch_size]
        b = to_device(collate([encoded[i] for i in idx]), device)
        with rt.autocast():
            res = model(
                input_ids=b["input_ids"],
                attention_mask=b["attention_mask"],
                output_hidden_states=True,
            )
        if not keep:
            continue
        ent = tsallis_entropy(res.logits, q).cpu()
        st = tsallis_entropy(res.logits, q_struct).cpu()
        hid = res.hidden_states[layer].float().cpu()
        for j, i in enumerate(idx):
            n = len(encoded[i].input_ids)
            local[i] = RowCache(ent[j, :n].clone(), st[j, :n].clone(), hid[j, :n].clone())
    out: list[RowCache | None] = [None] * len(encoded)
    for part in rt.all_gather(local):
        for i, c in part.items():
            out[i] = c
    return out  # type: ignore[return-value]


def _stack(cache: list[RowCache], idx: list[int], width: int, attr: str) -> torch.Tensor:
    first = getattr(cache[idx[0]], attr)
    out = torch.zeros((len(idx), width, *first.shape[1:]), dtype=first.dtype)
    for j, i in enumerate(idx):
        v = getattr(cache[i], attr)
        out[j, : v.shape[0]] = v
    return out


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool: positions ``t`` whose next label ``t + 1`` is supervised."""
    pos = torch.zeros_like(labels, dtype=torch.bool)
    pos[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return pos


# -- subdomains --------------------------------------------------------------------------------


def assign_subdomains(forget_rows, cache: list[RowCache], n_subdomains: int | None, seed: int):
    """Labels ``0..D-1`` per forget row and the subdomain names.

    From the rows' ``subdomain`` field when every row has one; otherwise k-means on the
    L2-normalised, mean-pooled routing-layer hidden states, with k chosen by silhouette in
    [2, 8] unless given.
    """
    names = [r.get("subdomain") for r in forget_rows]
    if all(n is not None for n in names):
        uniq = sorted(set(names))
        return [uniq.index(n) for n in names], uniq, "field"
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    feats = torch.stack([F.normalize(c.hidden.mean(0), dim=0) for c in cache]).numpy()
    n = len(feats)
    if n_subdomains is not None:
        if n_subdomains > n:
            raise ConfigError(f"n_subdomains={n_subdomains} is more than the {n} forget rows")
        ks = [n_subdomains]
    else:
        ks = list(range(2, min(8, n - 1) + 1)) or [1]
    best = None
    for k in ks:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(feats)
        score = silhouette_score(feats, km.labels_) if 1 < k < n else 0.0
        if best is None or score > best[0]:
            best = (score, km.labels_)
    labels = [int(x) for x in np.asarray(best[1])]
    return labels, [f"cluster{d}" for d in range(max(labels) + 1)], "kmeans"


# -- initialisation ----------------------------------------------------------------------------


@torch.no_grad()
def init_router(
    am: AlterModel, forget_cache, retain_cache, forget_enc, retain_enc, labels, threshold
):
    """Router rows from normalised centroids (slot 0 = retain): nearest-centroid at step 0."""
    D = am.cfg.n_forget_experts

    def feats(c: RowCache, e: Encoded, low_only: bool) -> torch.Tensor:
        f = F.layer_norm(c.hidden, c.hidden.shape[-1:])
        sup = torch.zeros(len(e.input_ids), dtype=torch.bool)
        sup[:-1] = torch.tensor(e.labels[1:]) != IGNORE_INDEX
        keep = sup & (c.entropy <= threshold) if low_only else sup
        if not keep.any():
            keep = sup if sup.any() else torch.ones_like(sup)
        return f[keep]

    retain_c = torch.cat(
        [feats(c, e, False) for c, e in zip(retain_cache, retain_enc, strict=True)]
    ).mean(0)
    forget_c = []
    for d in range(D):
        rows = [
            feats(c, e, True)
            for c, e, lab in zip(forget_cache, forget_enc, labels, strict=True)
            if lab == d
        ]
        forget_c.append(torch.cat(rows).mean(0))
    # Centre the centroids: they share a large common component that would otherwise swamp routing.
    allc = torch.stack([retain_c, *forget_c])
    allc = allc - allc.mean(0, keepdim=True)
    am.router.init_from_centroids(allc[0], allc[1:])
    return allc


def fit_router(
    am: AlterModel, forget_cache, retain_cache, forget_enc, retain_enc, labels, steps: int
) -> dict[str, float]:
    """Fit the router to Stage II's router loss on every cached training token at once.

    The same features and labels as ``L_router`` (forget rows' supervised tokens -> ``d + 1``,
    every retain token -> 0), full batch, Adam (lr 1e-2) from the centroid init. Stage II trains
    the router on one batch per step, 4 + 4 rows, which leaves it far from converged on small
    budgets (docs/ALTER.md, "Router fit"). Deterministic; every process of a data-parallel run
    holds the same cache, so they fit the same router. Returns the loss and slot accuracy.
    """
    feats, slots = [], []
    for c, e, lab in zip(forget_cache, forget_enc, labels, strict=True):
        sup = torch.zeros(len(e.input_ids), dtype=torch.bool)
        sup[:-1] = torch.tensor(e.labels[1:]) != IGNORE_INDEX
        feats.append(router_features(c.hidden, c.entropy)[sup])
        slots.append(torch.full((int(sup.sum()),), lab + 1))
    for c in retain_cache:
        feats.append(router_features(c.hidden, c.entropy))
        slots.append(torch.zeros(len(c.entropy), dtype=torch.long))
    x = torch.cat(feats).to(am.device)
    y = torch.cat(slots).to(am.device)
    weight = am.router.alter_router.weight
    fitted = weight.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([fitted], lr=1e-2)
    loss = torch.zeros(())
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(x @ fitted.T, y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        weight.copy_(fitted.to(weight.dtype))
        logits = x @ fitted.T
        final = float(F.cross_entropy(logits, y))
        pred = logits.argmax(-1)
        forget_tokens = y > 0
    return {
        "steps": steps,
        "loss": final,
        "accuracy_forget_tokens": float((pred[forget_tokens] == y[forget_tokens]).float().mean()),
        "accuracy_retain_tokens": float((pred[~forget_tokens] == 0).float().mean()),
        "tokens": int(len(y)),
    }


@torch.no_grad()
def init_forget_experts(
    am: AlterModel, forget_enc, forget_cache, labels, pad_id: int, threshold: float, eta: float
):
    """``B_f[d] = -eta * (W0 mu)(A mu)^T / (||A mu||^2 * scaling)``, mu = mean layer input over
    low-entropy supervised tokens of subdomain d (a small rank-1 push against its typical output)."""
    D = am.cfg.n_forget_experts
    device = am.device
    layers = [m for m in am.model.modules() if isinstance(m, AlterLinear)]
    sums = {id(m): torch.zeros(D, m.d_in, device=device) for m in layers}
    counts = torch.zeros(D, device=device)
    state: dict = {}

    def hook(mod, inputs, _out):
        x = inputs[0].float()  # (B, T, d_in)
        sel = state["sel"]  # (B, T, D) float one-hot of the token's subdomain, 0 elsewhere
        sums[id(mod)] += torch.einsum("btd,bti->di", sel, x)

    handles = [m.register_forward_hook(hook) for m in layers]
    collate = Collator(pad_id)
    try:
        with am.adapters_disabled():
            for s in range(0, len(forget_enc), 8):
                idx = list(range(s, min(s + 8, len(forget_enc))))
                b = to_device(collate([forget_enc[i] for i in idx]), device)
                width = b["input_ids"].shape[1]
                ent = _stack(forget_cache, idx, width, "entropy").to(device)
                low = supervised_positions(b["labels"]) & (ent <= threshold)
                onehot = F.one_hot(torch.tensor([labels[i] for i in idx], device=device), D)
                onehot = onehot.float()  # (B, D)
                state["sel"] = low.float()[..., None] * onehot[:, None, :]
                counts.add_(state["sel"].sum((0, 1)))
                am.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    for m in layers:
        w0 = full_tensor(m.base_layer.weight).float()  # FSDP: gathered, layer by layer
        w0 = w0 if isinstance(m.base_layer, torch.nn.Linear) else w0.t()  # (d_out, d_in)
        for d in range(D):
            if counts[d] == 0:
                continue
            mu = sums[id(m)][d] / counts[d]
            a_mu = m.alter_A.float() @ mu
            b = -eta * torch.outer(w0 @ mu, a_mu) / (a_mu.pow(2).sum().clamp_min(1e-12) * m.scaling)
            m.alter_B_f[d].copy_(b.to(m.alter_B_f[d].dtype))


# -- training ----------------------------------------------------------------------------------


def _clip_per_group(
    groups: dict[str, list[torch.nn.Parameter]], max_norm: float
) -> dict[str, float]:
    norms = {}
    for name, params in groups.items():
        with_grad = [p for p in params if p.grad is not None]
        if with_grad:
            norms[name] = float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm))
    return norms


def _batch(encoded, cache, idx, collate, device):
    b = collate([encoded[i] for i in idx])
    width = b["input_ids"].shape[1]
    b["entropy"] = _stack(cache, idx, width, "entropy")
    b["struct"] = _stack(cache, idx, width, "struct")
    b["hidden"] = _stack(cache, idx, width, "hidden")
    return to_device(b, device)


def stage_one(
    am: AlterModel,
    retain_enc,
    retain_cache,
    pad_id,
    tcfg: AlterTrainConfig,
    *,
    progress,
    log,
    runtime: Runtime | None = None,
):
    """Train A (lr_A) and B_r (lr_B) on retain data, NLL on high-entropy tokens only; return the
    number of tokens trained on."""
    rt = runtime or Runtime()
    groups = am.parameter_groups()
    opt = torch.optim.AdamW(
        [{"params": groups["A"], "lr": tcfg.lr_A}, {"params": groups["B_r"], "lr": tcfg.lr_B}],
        weight_decay=0.0,
    )
    collate = Collator(pad_id)
    rng = random.Random(tcfg.seed)
    per_epoch = math.ceil(len(retain_enc) / tcfg.retain_batch_size)
    total = math.ceil(tcfg.stage1_epochs * per_epoch)
    if tcfg.stage1_max_steps is not None:
        total = min(total, tcfg.stage1_max_steps)
    if total == 0:
        return 0
    am.train()
    k = tcfg.grad_accum
    params = groups["A"] + groups["B_r"]
    order: list[int] = []
    tokens = 0
    for step in tqdm(range(total), desc="ALTER stage I", disable=not progress, unit="step"):
        if len(order) < tcfg.retain_batch_size:
            fresh = list(range(len(retain_enc)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[: tcfg.retain_batch_size], order[tcfg.retain_batch_size :]
        tokens += sum(len(retain_enc[i].input_ids) for i in idx)
        opt.zero_grad(set_to_none=True)
        loss_sum, high_tokens = 0.0, 0
        for part in rt.parts([], idx, k):
            b = _batch(retain_enc, retain_cache, part.retain, collate, rt.device)
            high = b["entropy"] > am.threshold
            with rt.step(), rt.autocast(), rt.weighted(part.retain_weight):
                with am.routing(Route(grad_retain=True, a_grad_mask=high)):
                    logits = am.model(
                        input_ids=b["input_ids"], attention_mask=b["attention_mask"]
                    ).logits
                nll = token_nll(logits, b["labels"])  # (B, T-1)
                mask = (supervised_positions(b["labels"]) & high)[:, :-1]
                loss = masked_mean(nll, mask)
            (loss / k if k > 1 else loss).backward()
            loss_sum += loss.item() / k if k > 1 else loss.item()
            high_tokens += int(mask.sum()) if part.retain_weight else 0
        loss_value, high_all = rt.sum([loss_sum, high_tokens])
        rt.all_reduce_grads(params)
        norms = _clip_per_group({"A": groups["A"], "B_r": groups["B_r"]}, tcfg.max_grad_norm)
        opt.step()
        log(
            {
                "stage": 1,
                "step": step + 1,
                "loss": loss_value,
                "high_tokens": int(high_all),
                "grad_norm": norms,
            }
        )
    return tokens


def forget_schedule(
    labels: list[int], batch_size: int, rng: random.Random
) -> list[tuple[int, list[int]]]:
    """One epoch of forget batches, each from a single subdomain, in shuffled order."""
    batches = []
    for d in sorted(set(labels)):
        rows = [i for i, lab in enumerate(labels) if lab == d]
        rng.shuffle(rows)
        batches += [(d, rows[s : s + batch_size]) for s in range(0, len(rows), batch_size)]
    rng.shuffle(batches)
    return batches


def stage_two_plan(
    labels: list[int], n_retain: int, tcfg: AlterTrainConfig
) -> list[tuple[int, list[int], list[int]]]:
    """Every Stage II step's (subdomain, forget rows, retain rows), fixed up front by the seed, so
    a resumed run replays exactly the batches of an uninterrupted one."""
    rng = random.Random(tcfg.seed + 1)
    per_epoch = len(forget_schedule(labels, tcfg.forget_batch_size, random.Random(0)))
    total = math.ceil(tcfg.epochs * per_epoch)
    if tcfg.max_steps is not None:
        total = min(total, tcfg.max_steps)
    schedule: list[tuple[int, list[int]]] = []
    retain_order: list[int] = []
    plan = []
    for _ in range(total):
        if not schedule:
            schedule = forget_schedule(labels, tcfg.forget_batch_size, rng)
        d, f_idx = schedule.pop(0)
        if len(retain_order) < tcfg.retain_batch_size:
            fresh = list(range(n_retain))
            rng.shuffle(fresh)
            retain_order += fresh
        r_idx = retain_order[: tcfg.retain_batch_size]
        retain_order = retain_order[tcfg.retain_batch_size :]
        plan.append((d, f_idx, r_idx))
    return plan


def expert_learning_rates(
    n_experts: int, plan: list[tuple[int, list[int], list[int]]], tcfg: AlterTrainConfig
) -> list[float]:
    """Each forget expert's learning rate: ``lr_B``, or ``expert_lr_total`` / the Stage II steps
    the plan gives that expert (an expert with no step keeps ``lr_B``; it never moves)."""
    if tcfg.expert_lr_total is None:
        return [tcfg.lr_B] * n_experts
    steps = Counter(d for d, _, _ in plan)
    return [tcfg.expert_lr_total / steps[d] if steps[d] else tcfg.lr_B for d in range(n_experts)]


def stage_two_optimizer(
    am: AlterModel, tcfg: AlterTrainConfig, plan: list[tuple[int, list[int], list[int]]]
) -> torch.optim.Optimizer:
    groups = am.parameter_groups()
    if tcfg.expert_lr_total is None:  # one B_f group: the layout of runs saved before the option
        experts = [{"params": groups["B_f"], "lr": tcfg.lr_B}]
    else:
        lrs = expert_learning_rates(am.cfg.n_forget_experts, plan, tcfg)
        experts = [{"params": am.expert_parameters(d), "lr": lr} for d, lr in enumerate(lrs)]
    return torch.optim.AdamW(
        [
            {"params": groups["A"], "lr": tcfg.lr_A},
            {"params": groups["B_r"], "lr": tcfg.lr_B},
            *experts,
            {"params": groups["router"], "lr": tcfg.lr_router},
        ],
        weight_decay=0.0,
    )


def stage_two(
    am,
    forget_enc,
    forget_cache,
    labels,
    retain_enc,
    retain_cache,
    pad_id,
    tcfg,
    *,
    progress,
    log,
    on_checkpoint=None,
    opt: torch.optim.Optimizer | None = None,
    start: int = 0,
    runtime: Runtime | None = None,
):
    """Asymmetric unlearning with strict gradient isolation (see the module docstring).

    ``opt`` and ``start`` continue a resumed run; ``on_checkpoint(step, opt)`` is called every
    ``checkpoint_every`` steps.
    """
    rt = runtime or Runtime()
    groups = am.parameter_groups()
    params = [p for group in groups.values() for p in group]
    plan = stage_two_plan(labels, len(retain_enc), tcfg)
    opt = opt or stage_two_optimizer(am, tcfg, plan)
    collate = Collator(pad_id)
    total = len(plan)
    k = tcfg.grad_accum
    am.train()
    bar = tqdm(
        range(start, total),
        initial=start,
        total=total,
        desc="ALTER stage II",
        disable=not progress,
        unit="step",
    )
    for step in bar:
        d, f_idx, r_idx = plan[step]
        opt.zero_grad(set_to_none=True)
        sums = dict.fromkeys(("loss", "ihl", "retain_nll", "retain_kl", "struct", "router_ce"), 0.0)
        for part in rt.parts(f_idx, r_idx, k):
            fb = _batch(forget_enc, forget_cache, part.forget, collate, rt.device)
            rb = _batch(retain_enc, retain_cache, part.retain, collate, rt.device)
            with rt.step(), rt.autocast():
                terms = _stage_two_terms(am, fb, rb, d, rt, part, retain_kl=tcfg.retain_kl > 0)
            loss = (
                tcfg.beta * terms["ihl"]
                + tcfg.gamma * terms["retain_nll"]
                + tcfg.retain_kl * terms["retain_kl"]
                + tcfg.lam * terms["struct"]
                + tcfg.mu * terms["router_ce"]
            )
            (loss / k if k > 1 else loss).backward()
            for key, v in (("loss", loss), *terms.items()):
                sums[key] += v.item() / k if k > 1 else v.item()
        values = dict(zip(sums, rt.sum(list(sums.values())), strict=True))
        rt.all_reduce_grads(params)
        norms = _clip_per_group(groups, tcfg.max_grad_norm)
        opt.step()
        log({"stage": 2, "step": step + 1, "subdomain": d, **values, "grad_norm": norms})
        if on_checkpoint and tcfg.checkpoint_every and (step + 1) % tcfg.checkpoint_every == 0:
            on_checkpoint(step + 1, opt)


def _stage_two_terms(
    am, fb, rb, d: int, rt: Runtime, part, *, retain_kl: bool = False
) -> dict[str, torch.Tensor]:
    """The Stage II loss terms of one (micro-)batch (shares of the global-batch means in a
    data-parallel step; a stand-in slice's terms count for nothing). ``retain_kl``: also the KL
    of the retain answers' next-token distributions from the base model's (else that term is 0)."""
    # Forget pass: only B_f[d] (oracle), B_r detached, A through high-entropy positions only.
    f_high = fb["entropy"] > am.threshold
    f_sup = supervised_positions(fb["labels"])
    with am.routing(Route(oracle_expert=d, grad_retain=False, a_grad_mask=f_high)):
        f_logits = am.model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"]).logits
    with rt.weighted(part.forget_weight):
        ihl_at = (f_sup & ~f_high)[:, :-1]
        ihl = masked_mean(inverse_hinge(f_logits, fb["labels"], where=ihl_at), ihl_at)
        # S_q of the adapted model at the high-entropy positions only (the vocabulary-wide work
        # on those rows; L_struct reads no other position).
        high = f_high & fb["attention_mask"].bool()
        s_theta = at_positions(high, tsallis_entropy(f_logits[high], am.cfg.q_struct))
        struct = structural_invariance(s_theta, fb["struct"], high)

    # Retain pass: only B_r, A through high-entropy positions only.
    r_high = rb["entropy"] > am.threshold
    with am.routing(Route(grad_retain=True, a_grad_mask=r_high)):
        r_logits = am.model(input_ids=rb["input_ids"], attention_mask=rb["attention_mask"]).logits
    r_sup = supervised_positions(rb["labels"])[:, :-1]
    with rt.weighted(part.retain_weight):
        nll = masked_mean(token_nll(r_logits, rb["labels"]), r_sup)
    kl = r_logits.new_zeros(())
    if retain_kl:
        with torch.no_grad(), am.adapters_disabled():
            base = am.model(input_ids=rb["input_ids"], attention_mask=rb["attention_mask"]).logits
        with rt.weighted(part.retain_weight):
            kl = masked_mean(token_kl(r_logits, base, rb["labels"]), r_sup)

    # Router: cross-entropy on detached base features; retain tokens -> slot 0, forget -> d + 1.
    f_feat = router_features(fb["hidden"], fb["entropy"])[f_sup]
    r_feat = router_features(rb["hidden"], rb["entropy"])[rb["attention_mask"].bool()]
    if not part.forget_weight:  # a stand-in's tokens are not part of the batch
        f_feat = f_feat[:0]
    if not part.retain_weight:
        r_feat = r_feat[:0]
    feats = torch.cat([f_feat, r_feat])
    target = torch.cat(
        [
            torch.full((len(f_feat),), d + 1, device=feats.device),
            torch.zeros(len(r_feat), dtype=torch.long, device=feats.device),
        ]
    )
    router_ce = router_cross_entropy(am.router.logits(feats), target)
    return {
        "ihl": ihl,
        "retain_nll": nll,
        "retain_kl": kl,
        "struct": struct,
        "router_ce": router_ce,
    }


def unlearn_alter(
    model,
    tokenizer,
    forget,
    retain,
    *,
    adapter_cfg: AlterConfig | None = None,
    train_cfg: AlterTrainConfig | None = None,
    log_path: Path | None = None,
    checkpoint_dir: Path | None = None,
    resume_dir: Path | None = None,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> tuple[AlterModel, dict]:
    """Run ALTER end to end on a plain HF causal LM; return the wrapped model and a summary.

    With ``resume_dir``, resumable state is saved there at the end of Stage I and every
    ``checkpoint_every`` Stage II steps; a run that finds state there continues from it (the
    pre-pass is recomputed, it is deterministic) and ends with the same adapter as an
    uninterrupted run. With a distributed ``runtime`` only rank 0 writes (log, snapshots,
    resumable state); every process resumes from the same checkpoint.
    """
    from alter.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, truncate_log

    adapter_cfg = adapter_cfg or AlterConfig()
    tcfg = train_cfg or AlterTrainConfig()
    rt = runtime_for(runtime or launch_runtime(tcfg.mixed_precision), "alter")
    if not rt.is_main:
        log_path, checkpoint_dir, progress = None, None, False
    target_names(model, adapter_cfg.target_modules)  # fail before any expensive work
    has_field = all(r.get("subdomain") is not None for r in forget)
    if not has_field and tcfg.n_subdomains is not None and tcfg.n_subdomains > len(forget):
        raise ConfigError(
            f"n_subdomains={tcfg.n_subdomains} is more than the {len(forget)} forget rows"
        )
    torch.manual_seed(tcfg.seed)
    t0 = time.perf_counter()
    pad = tokenizer.pad_token_id
    f_enc = encode_rows(forget, tokenizer, max_length=tcfg.max_length)
    r_enc = encode_rows(retain, tokenizer, max_length=tcfg.max_length)
    n_layers = num_layers(model.config)
    layer = adapter_cfg.routing_layer if adapter_cfg.routing_layer is not None else n_layers // 2
    # FSDP: the frozen base is sharded now, before the pre-pass; the adapters, injected after it
    # (their number of experts comes from the pre-pass), stay whole on every process.
    rt.shard_frozen(model)
    model.eval()
    q, qs = adapter_cfg.entropy_q, adapter_cfg.q_struct
    f_cache, r_cache = (
        base_cache(
            model,
            enc,
            pad,
            layer=layer,
            q=q,
            q_struct=qs,
            batch_size=tcfg.prepass_batch_size,
            progress=progress,
            desc=f"pre-pass {name}",
            runtime=rt,
        )
        for enc, name in ((f_enc, "forget"), (r_enc, "retain"))
    )

    labels, names, source = assign_subdomains(list(forget), f_cache, tcfg.n_subdomains, tcfg.seed)
    n_experts = len(names)
    if n_experts > len(forget):
        raise ConfigError(f"{n_experts} subdomains but only {len(forget)} forget rows")
    # Base entropies at every supervised (answer) position of the training rows.
    answer_entropy = torch.cat(
        [
            c.entropy[:-1][torch.tensor(e.labels[1:]) != IGNORE_INDEX]
            for c, e in zip(f_cache + r_cache, f_enc + r_enc, strict=True)
        ]
    )
    threshold = adapter_cfg.threshold
    if adapter_cfg.threshold_mode == "adaptive":
        threshold = float(adaptive_threshold(answer_entropy, method="otsu"))
    cfg = AlterConfig(
        **{
            **asdict(adapter_cfg),
            "n_forget_experts": n_experts,
            "routing_layer": layer,
            "threshold": threshold,
        }
    )
    am = AlterModel(model, cfg)
    if rt.fsdp is not None:  # the checksum gathers pieces of the shards: every process, once
        from alter.adapters.io import base_fingerprint

        am.base_fingerprint = base_fingerprint(am)
    am.router.to(am.device)
    am.subdomains = list(names)
    # The entropy probe for inference="probe": routing-layer hidden -> base entropy, on every
    # position of the training rows (closed form, deterministic, cheap). Fitted before training
    # so that every snapshot carries it.
    probe = am.router.fit_probe(
        [c.hidden for c in f_cache + r_cache], [c.entropy for c in f_cache + r_cache]
    )
    if tcfg.gradient_checkpointing:
        am.enable_gradient_checkpointing()

    ckpt = latest_checkpoint(resume_dir) if resume_dir else None
    state: dict = {}
    tensors: dict = {}
    opt = None
    if ckpt is not None:
        tensors, state = load_checkpoint(ckpt, {})
        _load_adapter_tensors(am, tensors)
        done = (state["stage"], state["step"])
        if log_path:
            truncate_log(log_path, lambda rec: (rec.get("stage", 0), rec.get("step", 0)) <= done)
    log_file = log_path.open("a") if log_path else None

    def log(rec: dict) -> None:
        if log_file:
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()

    def checkpoint(step: int, optimizer) -> None:
        if checkpoint_dir is not None:
            from alter.adapters.io import save_adapter

            save_adapter(am, checkpoint_dir / f"step-{step}", extra={"stage2_step": step})
        if rt.is_main and resume_dir is not None and step < total_two:
            save_checkpoint(
                resume_dir,
                step,
                am.adapter_state_dict(),
                {"stage2": optimizer},
                {"stage": 2},
            )

    plan_two = stage_two_plan(labels, len(r_enc), tcfg)
    total_two = len(plan_two)
    tokens, train_seconds = 0, 0.0
    try:
        if not state:
            t = time.perf_counter()
            tokens += stage_one(
                am, r_enc, r_cache, pad, tcfg, progress=progress, log=log, runtime=rt
            )
            train_seconds += time.perf_counter() - t
            if rt.is_main and resume_dir is not None:
                save_checkpoint(resume_dir, 0, am.adapter_state_dict(), {}, {"stage": 1})
        stage2_tensors = tensors if state.get("stage") == 2 else None
        init_forget_experts(am, f_enc, f_cache, labels, pad, threshold, cfg.init_eta)
        # Slot centroids (0 = retain, d + 1 = subdomain d) in LayerNorm(h) space; saved with the run.
        am.centroids = init_router(am, f_cache, r_cache, f_enc, r_enc, labels, threshold)
        router_fit = fit_router(am, f_cache, r_cache, f_enc, r_enc, labels, tcfg.router_fit_steps)
        start = 0
        if stage2_tensors is not None:  # resumed mid Stage II: the checkpoint overrides the inits
            _load_adapter_tensors(am, stage2_tensors)
            opt = stage_two_optimizer(am, tcfg, plan_two)
            load_checkpoint(ckpt, {"stage2": opt})
            start = state["step"]
        tokens += sum(
            len(e.input_ids)
            for _, f_idx, r_idx in plan_two[start:]
            for e in [*(f_enc[i] for i in f_idx), *(r_enc[i] for i in r_idx)]
        )
        t = time.perf_counter()
        stage_two(
            am,
            f_enc,
            f_cache,
            labels,
            r_enc,
            r_cache,
            pad,
            tcfg,
            progress=progress,
            log=log,
            on_checkpoint=checkpoint if (checkpoint_dir or resume_dir) else None,
            opt=opt,
            start=start,
            runtime=rt,
        )
        train_seconds += time.perf_counter() - t
    finally:
        if log_file:
            log_file.close()
    am.eval()
    summary = {
        "subdomains": names,
        "subdomain_source": source,
        "forget_labels": labels,
        "threshold": threshold,
        "high_fraction_answer_tokens": float((answer_entropy > threshold).float().mean()),
        "entropy_probe": probe,
        "router_fit": router_fit,
        "expert_lr": expert_learning_rates(am.cfg.n_forget_experts, plan_two, tcfg),
        "parameters": count_adapter_parameters(am),
        "seconds": time.perf_counter() - t0,
        # Stage I + II (not the pre-pass, clustering, expert and router initialisation); tokens
        # of the forget and retain rows of every step, as the baselines count them.
        "train_seconds": train_seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / train_seconds if train_seconds > 0 and not state else None,
        "processes": rt.world,
        **rt.sharding,
        "resumed_from": state or None,  # {"stage": 1|2, "step": N} of the checkpoint, if any
        "train_config": asdict(tcfg),
        "adapter_config": cfg.to_dict(),
    }
    return am, summary


@torch.no_grad()
def _load_adapter_tensors(am: AlterModel, tensors: dict[str, torch.Tensor]) -> None:
    params = am.adapter_tensors()
    for k, v in tensors.items():
        params[k].copy_(v)


class ALTER:
    """Registry entry: ALTER runs its own two-stage loop (:func:`unlearn_alter`), not the shared one."""

    name = "alter"
    description = (
        "ALTER: asymmetric LoRA (shared A, per-subdomain B_f, B_r) + token-entropy guidance"
    )
    default_lr = AlterTrainConfig.lr_B  # the shared --lr sets lr_B, the experts' learning rate
    uses_retain = True
    Config = AlterTrainConfig

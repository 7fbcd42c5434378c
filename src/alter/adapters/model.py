"""``AlterModel``: a Hugging Face causal LM with ALTER adapters injected, plus the router.

Inference (``AlterConfig.inference``, switchable per model with :meth:`AlterModel.set_inference`):

* ``prepass`` (the spec): a no-grad **base pre-pass** (adapters off) yields each position's token
  entropy and the routing layer's hidden state, then the adapted pass runs with per-token expert
  weights from the router. ``generate`` keeps the two passes in lockstep, each with its own KV
  cache. About two forwards per token.
* ``probe``: the entropy comes from the router's entropy probe on the routing-layer hidden state,
  so the base model's logits are never needed. With ``layers="all"`` the pre-pass stops at the
  routing block (~1.5 forwards); with ``layers="upper"`` the blocks below the routing layer carry
  no adapter, so the adapted pass's own hidden state there *is* the base one: a hook on the routing
  block computes the route in flight and inference is a single pass with one KV cache.

Entropy convention: ``S[:, t]`` is the entropy of the base model's predictive distribution at
position ``t`` (over token ``t + 1``). The same value routes position ``t``, masks the loss on
label ``t + 1`` and gates ``A``'s gradient at ``t``.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
from torch import nn

from alter.adapters.config import INFERENCE_MODES, AlterConfig
from alter.adapters.layer import ADAPTER_PREFIX, AlterLinear, Route
from alter.adapters.router import Router, router_features
from alter.errors import ConfigError

NO_PROBE = "this adapter has no entropy probe (trained before it existed): use inference='prepass'"


class _StopForward(Exception):
    """Raised by a hook to end a forward pass at the routing block."""


@dataclass
class PrePass:
    """Base-model quantities per position: entropy ``(B, T)`` at q and the routing hidden state."""

    entropy: torch.Tensor
    hidden: torch.Tensor
    struct_entropy: torch.Tensor | None = None


def num_layers(config) -> int:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ConfigError("cannot tell how many layers the model has")


def _hidden_size(config) -> int:
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ConfigError("cannot tell the model's hidden size")


def cache_kwargs(model: nn.Module, cache) -> dict:
    """The KV-cache keyword of ``model.forward``: ``cache`` (transformers >= 5.2x) or the older
    ``past_key_values`` (still accepted there, with a deprecation warning)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def last_logits_kwargs(model: nn.Module) -> dict:
    """``{"logits_to_keep": 1}`` when ``model.forward`` takes it (the head then computes only the
    last position's logits: what decoding reads), else nothing."""
    import inspect

    return (
        {"logits_to_keep": 1}
        if "logits_to_keep" in inspect.signature(model.forward).parameters
        else {}
    )


def returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def target_names(model: nn.Module, target_modules: str) -> list[str]:
    """Names of the linear layers ``target_modules`` selects; a clear error when there are none."""
    pattern = re.compile(target_modules)
    names = [
        name
        for name, module in model.named_modules()
        if pattern.search(name)
        and not isinstance(module, AlterLinear)
        and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")
    ]
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:4]
        raise ConfigError(
            f"target_modules {target_modules!r} matches no linear layer of this model "
            f"(its linear layers are named like: {', '.join(linear)})"
        )
    return names


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of decoder blocks (the first ModuleList with one entry per layer)."""
    n = num_layers(model.config)
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n:
            return name, m
    raise ConfigError(f"cannot find the {n} decoder blocks of this model")


def block_index(name: str, blocks_name: str) -> int | None:
    """Index of the decoder block a module named ``name`` sits in (None outside the blocks)."""
    prefix = f"{blocks_name}."
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def inject(model: nn.Module, cfg: AlterConfig, *, from_block: int = 0) -> list[str]:
    """Replace every module whose name matches ``cfg.target_modules`` (and, with
    ``from_block > 0``, sits in a decoder block ``>= from_block``) with an ``AlterLinear``."""
    names = target_names(model, cfg.target_modules)
    if from_block > 0:
        blocks_name, _ = decoder_blocks(model)
        names = [n for n in names if (block_index(n, blocks_name) or -1) >= from_block]
        if not names:
            raise ConfigError(
                f"target_modules {cfg.target_modules!r} matches no layer in decoder blocks "
                f">= {from_block} (layers=upper)"
            )
    for name in names:
        module = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = AlterLinear(module, cfg.r, cfg.n_forget_experts, cfg.scaling, cfg.dropout)
        setattr(parent, child, layer)
    return names


class AlterModel(nn.Module):
    """The wrapped model. Only parameters named ``alter_*`` are trainable."""

    def __init__(self, model: nn.Module, cfg: AlterConfig, *, threshold: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model
        n_layers = num_layers(model.config)
        self.routing_layer = cfg.routing_layer if cfg.routing_layer is not None else n_layers // 2
        if not 0 <= self.routing_layer <= n_layers:
            raise ConfigError(f"routing_layer must be in [0, {n_layers}], got {self.routing_layer}")
        if self.routing_layer == n_layers and (cfg.layers == "upper" or cfg.inference == "probe"):
            raise ConfigError(
                f"layers=upper and inference=probe need a routing layer below {n_layers} "
                "(a decoder block to hook)"
            )
        upper = cfg.layers == "upper"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.adapted = inject(model, cfg, from_block=self.routing_layer if upper else 0)
        self.router = Router(_hidden_size(model.config), cfg.n_forget_experts)
        self.threshold = float(cfg.threshold if threshold is None else threshold)
        self.subdomains: list[str] = [str(d) for d in range(cfg.n_forget_experts)]
        self.centroids: torch.Tensor | None = None  # router slot centroids, set by training
        # Checksums of the base weights (adapters.io.base_fingerprint), set by training when the
        # base is sharded (FSDP): computing them there is a collective, saving is rank 0's.
        self.base_fingerprint: dict[str, str] | None = None
        self.inference = cfg.inference
        freeze_all_but_adapter(self)

    def set_inference(self, mode: str) -> None:
        """Switch how inference finds the routing entropy: ``prepass`` or ``probe`` (which needs
        a fitted entropy probe and a routing layer below the last block)."""
        if mode not in INFERENCE_MODES:
            raise ConfigError(f"inference must be 'prepass' or 'probe', got {mode!r}")
        if mode == "probe" and self.routing_layer >= num_layers(self.model.config):
            raise ConfigError("inference=probe needs a routing layer below the last block")
        if mode == "probe" and not self.router.probe_fitted:
            raise ConfigError(NO_PROBE)
        self.inference = mode

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    def __getattr__(self, name: str):
        # Anything AlterModel does not define (tie_weights, generation_config, dtype, ...) is the
        # wrapped model's, as with peft's wrappers: evaluation harnesses take it as an HF model.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def layers(self) -> list[AlterLinear]:
        return [m for m in self.model.modules() if isinstance(m, AlterLinear)]

    @contextlib.contextmanager
    def adapters_disabled(self):
        """The frozen base model, exactly (adapter paths skipped). Nestable: on exit every layer
        gets back the state it had on entry, so a forward of this model (whose base pre-pass
        disables the adapters too) inside the block is the base model's forward."""
        layers = self.layers()
        before = [m.enabled for m in layers]
        for m in layers:
            m.enabled = False
        try:
            yield
        finally:
            for m, enabled in zip(layers, before, strict=True):
                m.enabled = enabled

    @contextlib.contextmanager
    def routing(self, route: Route):
        """Install ``route`` on every adapted layer for the duration of the block."""
        layers = self.layers()
        for m in layers:
            m.route = route
        try:
            yield
        finally:
            for m in layers:
                m.route = None

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the wrapped model's blocks in backward. The route and the adapter switch are
        context state, gone when backward runs, so the recomputation reinstalls the ones that were
        in force when the block first ran (``context_fn`` of ``torch.utils.checkpoint``)."""
        from alter.models import enable_gradient_checkpointing

        layers = self.layers()

        def contexts():
            saved = [(m.route, m.enabled) for m in layers]

            @contextlib.contextmanager
            def recompute():
                now = [(m.route, m.enabled) for m in layers]
                for m, (route, enabled) in zip(layers, saved, strict=True):
                    m.route, m.enabled = route, enabled
                try:
                    yield
                finally:
                    for m, (route, enabled) in zip(layers, now, strict=True):
                        m.route, m.enabled = route, enabled

            return contextlib.nullcontext(), recompute()

        enable_gradient_checkpointing(self.model, context_fn=contexts)

    # -- the base pre-pass ------------------------------------------------------------------
    @torch.no_grad()
    def prepass(
        self,
        input_ids,
        attention_mask=None,
        *,
        position_ids=None,
        past_key_values=None,
        struct: bool = False,
    ):
        """Run the frozen base model; return entropy, routing hidden state (and its KV cache)."""
        from alter.entropy import tsallis_entropy

        with self.adapters_disabled():
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **({"position_ids": position_ids} if position_ids is not None else {}),
                **cache_kwargs(self.model, past_key_values),
                use_cache=past_key_values is not None,
                output_hidden_states=True,
            )
        ent = tsallis_entropy(out.logits, self.cfg.entropy_q)
        st = tsallis_entropy(out.logits, self.cfg.q_struct) if struct else None
        pre = PrePass(entropy=ent, hidden=out.hidden_states[self.routing_layer], struct_entropy=st)
        return pre, returned_cache(out)

    def route_from_prepass(self, pre: PrePass) -> Route:
        """Inference routing: router weights on every token, no gradients anywhere special."""
        logits = self.router.logits(router_features(pre.hidden, pre.entropy))
        w = self.router.expert_weights(
            logits,
            pre.entropy,
            self.threshold,
            tau_high=self.cfg.tau_high,
            tau_low=self.cfg.tau_low,
            top_k_high=self.cfg.top_k_high,
            top_k_low=self.cfg.top_k_low,
        )
        return Route(expert_weights=w)

    def _routing_block(self) -> nn.Module:
        return decoder_blocks(self.model)[1][self.routing_layer]

    def _probe_prepass(self, hidden: torch.Tensor) -> PrePass:
        if not self.router.probe_fitted:
            raise ConfigError(NO_PROBE)
        return PrePass(entropy=self.router.predicted_entropy(hidden), hidden=hidden)

    @torch.no_grad()
    def _hidden_at_routing_block(self, inputs: dict, cache=None) -> torch.Tensor:
        """Base model run up to the routing block only (stopped there); its input hidden state."""
        captured: list[torch.Tensor] = []

        def stop(_module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _StopForward

        handle = self._routing_block().register_forward_pre_hook(stop, with_kwargs=True)
        try:
            with self.adapters_disabled():
                self.model(**inputs, **cache_kwargs(self.model, cache), use_cache=cache is not None)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0]

    @contextlib.contextmanager
    def _route_in_flight(self):
        """layers=upper + probe: route from the adapted pass's own hidden state at the routing
        block (equal to the base one: no adapter below it), installed before the block runs."""
        layers = self.layers()

        def install(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            route = self.route_from_prepass(self._probe_prepass(hidden))
            for m in layers:
                m.route = route

        handle = self._routing_block().register_forward_pre_hook(install, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for m in layers:
                m.route = None

    def _routed(self, inputs: dict, *, base_cache=None, **kwargs):
        """One routed forward of ``inputs`` (input_ids, attention_mask, position_ids); the
        adapted pass gets ``kwargs``, the base pre-pass (if any) ``base_cache``."""
        if self.inference == "probe" and self.cfg.layers == "upper":
            with self._route_in_flight():
                return self.model(**inputs, **kwargs)
        if self.inference == "probe":
            pre = self._probe_prepass(self._hidden_at_routing_block(inputs, base_cache))
        else:
            pre, _ = self.prepass(**inputs, past_key_values=base_cache)
        with self.routing(self.route_from_prepass(pre)):
            return self.model(**inputs, **kwargs)

    # -- inference --------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask=None, **kwargs):
        """Routed forward (see the module docstring); returns the HF model output."""
        return self._routed({"input_ids": input_ids, "attention_mask": attention_mask}, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        **_ignored,
    ) -> torch.Tensor:
        """Greedy (or sampled) decoding; with a pre-pass, base and adapted passes run in lockstep
        (two KV caches), with ``layers="upper"`` + ``inference="probe"`` one pass and one cache.

        Accepts left-padded batches like ``transformers``' ``generate``; returns prompt + new tokens.
        """
        from transformers import DynamicCache

        if max_new_tokens is None:  # transformers' convention: max_length counts the prompt
            max_new_tokens = max(0, max_length - input_ids.shape[1]) if max_length else 32
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        eos = eos_token_id if eos_token_id is not None else self.config.eos_token_id
        pad = pad_token_id if pad_token_id is not None else (eos if eos is not None else 0)
        base_cache, adapted_cache = DynamicCache(), DynamicCache()
        ids, mask = input_ids, attention_mask
        step_ids = ids
        position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
        step_pos = position_ids
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        # The adapted pass's keywords are the same every step (the cache object is updated in place).
        adapted_kwargs = {
            **cache_kwargs(self.model, adapted_cache),
            **last_logits_kwargs(self.model),
            "use_cache": True,
        }
        for _ in range(max_new_tokens):
            out = self._routed(
                {"input_ids": step_ids, "attention_mask": mask, "position_ids": step_pos},
                base_cache=base_cache,
                **adapted_kwargs,
            )
            logits = out.logits[:, -1, :].float()
            if do_sample:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=-1)
            mask = torch.cat([mask, torch.ones_like(nxt[:, None])], dim=-1)
            step_ids = nxt[:, None]
            step_pos = position_ids[:, -1:] + 1
            position_ids = torch.cat([position_ids, step_pos], dim=-1)
            if eos is not None:
                done |= nxt == eos
                if done.all():
                    break
        return ids

    # -- export -----------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, mode: str = "retention", weights: list[float] | None = None) -> nn.Module:
        """Fold the adapter into the base weights and return the plain HF model (in place).

        There is no exact static merge: routing is per token. ``retention`` folds ``B_r`` only
        (the forget experts are dropped: loses the unlearning, keeps Stage I/II retention
        learning). ``fixed`` folds ``B_r + sum_d w_d B_f[d]`` with the same weights on every
        token (applies the forget experts everywhere, including retain-like text). Use the
        wrapped model for faithful behaviour; merge only for deployment constraints.

        The sum ``W0 + delta`` is formed in float32 and rounded once to the base weights' dtype:
        exact on a float32 base; on a bfloat16 base the merged weights keep bf16's resolution
        (~3 significant digits), so deltas much smaller than ``W0`` are partly rounded away
        (merge on a float32 base to keep them).
        """
        if mode not in ("retention", "fixed"):
            raise ConfigError(f"merge mode must be 'retention' or 'fixed', got {mode!r}")
        if mode == "fixed" and (weights is None or len(weights) != self.cfg.n_forget_experts):
            raise ConfigError(
                f"merge mode 'fixed' needs {self.cfg.n_forget_experts} expert weights"
            )
        for name in self.adapted:
            layer = self.model.get_submodule(name)
            b = layer.alter_B_r.float().clone()
            if mode == "fixed":
                for d, w in enumerate(weights):
                    b += float(w) * layer.alter_B_f[d].float()
            delta = layer.scaling * (b @ layer.alter_A.float())  # (d_out, d_in)
            base = layer.base_layer
            if not isinstance(base, nn.Linear):  # Conv1D stores (d_in, d_out)
                delta = delta.t()
            base.weight.copy_(base.weight.float() + delta)  # one rounding to the weight's dtype
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, base)
        for p in self.model.parameters():
            p.requires_grad_(True)
        return self.model

    # -- parameters -------------------------------------------------------------------------
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every adapter tensor (A, B_r, B_f, router, entropy probe), keyed by its module path."""
        return {k: v.detach().clone() for k, v in self.adapter_tensors().items()}

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The live adapter parameters and buffers (the entropy probe), by module path."""
        named = [*self.named_parameters(), *self.named_buffers()]
        return {k: v for k, v in named if is_adapter_param(k)}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``A``, ``B_r``, ``B_f`` and ``router`` parameters, for per-group lr and clipping."""
        groups: dict[str, list[nn.Parameter]] = {"A": [], "B_r": [], "B_f": [], "router": []}
        for name, p in self.named_parameters():
            if not is_adapter_param(name):
                continue
            if "alter_A" in name:
                groups["A"].append(p)
            elif "alter_B_r" in name:
                groups["B_r"].append(p)
            elif "alter_B_f" in name:
                groups["B_f"].append(p)
            elif "alter_router" in name:
                groups["router"].append(p)
        return groups

    def expert_parameters(self, d: int) -> list[nn.Parameter]:
        return [m.alter_B_f[d] for m in self.layers()]


def is_adapter_param(name: str) -> bool:
    return any(part.startswith(ADAPTER_PREFIX) for part in name.split("."))


def freeze_all_but_adapter(model: nn.Module) -> None:
    """Structure decides what trains: exactly the ``alter_*`` parameters."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_param(name))


def count_adapter_parameters(model: nn.Module) -> dict[str, int]:
    """Adapter parameter counts by kind plus the base model's total."""
    out = {"A": 0, "B_r": 0, "B_f": 0, "router": 0, "base": 0}
    for name, p in model.named_parameters():
        if not is_adapter_param(name):
            out["base"] += p.numel()
        else:
            for key in ("A", "B_r", "B_f", "router"):
                if f"alter_{key}" in name:
                    out[key] += p.numel()
    out["adapter"] = out["A"] + out["B_r"] + out["B_f"] + out["router"]
    return out

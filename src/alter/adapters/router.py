"""The entropy-aware router: content + entropy features -> D + 1 slots -> per-token expert weights.

Features per token: ``f_t = [LayerNorm(h_t); S_t; 1]`` with ``h_t`` the frozen base model's hidden
state at the routing layer and ``S_t`` its token entropy (a scalar alone cannot choose between
experts). Slot 0 means "no forget expert". The temperature and top-k switch at the threshold:
``tau_high`` / ``top_k_high`` on high-entropy tokens, ``tau_low`` / ``top_k_low`` on low-entropy
ones. Kept weights are not renormalised: slot 0 absorbs mass, so retain-like tokens get ~0.

The router also holds the **entropy probe** (``alter_probe``, a buffer: fitted in closed form,
never by gradient): a ridge regression ``S_t ~ LayerNorm(h_t) . w + b`` from the routing-layer
hidden state to the base entropy, fitted on the training rows' pre-pass. It lets inference route
without the base model's final logits (``inference="probe"``, see :mod:`alter.adapters.model`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def router_features(hidden: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """``(B, T, H)``, ``(B, T)`` -> ``(B, T, H + 2)`` in float32 (parameter-free LayerNorm)."""
    h = F.layer_norm(hidden.float(), hidden.shape[-1:])
    ones = torch.ones_like(entropy, dtype=torch.float32)
    return torch.cat([h, entropy.float()[..., None], ones[..., None]], dim=-1)


class Router(nn.Module):
    """A linear map from features to D + 1 slot logits."""

    def __init__(self, hidden_size: int, n_experts: int):
        super().__init__()
        self.n_experts = n_experts
        # float32 whatever the base weights' dtype: the features are float32 (router_features).
        self.alter_router = nn.Linear(
            hidden_size + 2, n_experts + 1, bias=False, dtype=torch.float32
        )
        nn.init.zeros_(self.alter_router.weight)
        # [w; b] of the entropy probe; all zeros until fit_probe (older adapters have none).
        self.register_buffer("alter_probe", torch.zeros(hidden_size + 1, dtype=torch.float32))

    @property
    def probe_fitted(self) -> bool:
        return bool(self.alter_probe.any())

    def predicted_entropy(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, T, H)`` routing-layer hidden states -> ``(B, T)`` predicted base entropy (>= 0)."""
        h = F.layer_norm(hidden.float(), hidden.shape[-1:])
        return (h @ self.alter_probe[:-1] + self.alter_probe[-1]).clamp_min(0.0)

    @torch.no_grad()
    def fit_probe(
        self, hidden: list[torch.Tensor], entropy: list[torch.Tensor], ridge: float = 1.0
    ) -> dict[str, float]:
        """Fit the entropy probe on ``(T_i, H)`` hidden states and ``(T_i,)`` entropies (ridge
        on ``w``, not on the bias; float64 normal equations). Returns R^2 on the fitting tokens."""
        x = F.layer_norm(torch.cat(hidden).double(), hidden[0].shape[-1:])
        y = torch.cat(entropy).double()
        x1 = torch.cat([x, torch.ones_like(y)[:, None]], dim=1)
        reg = torch.full((x1.shape[1],), float(ridge), dtype=torch.float64)
        reg[-1] = 0.0
        w = torch.linalg.solve(x1.T @ x1 + torch.diag(reg), x1.T @ y)
        self.alter_probe.copy_(w.to(self.alter_probe.dtype))
        resid = y - x1 @ w
        r2 = 1.0 - float(resid.pow(2).sum() / (y - y.mean()).pow(2).sum().clamp_min(1e-12))
        return {"r2": r2, "tokens": int(y.numel()), "ridge": float(ridge)}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, T, H + 2)`` -> ``(B, T, D + 1)``."""
        return self.alter_router(features)

    @torch.no_grad()
    def init_from_centroids(
        self, retain_centroid: torch.Tensor, forget_centroids: torch.Tensor, scale: float = 10.0
    ):
        """Nearest-centroid routing at step 0: row d is the normalised centroid of slot d.

        Centroids live in LayerNorm(h) space ``(H,)`` / ``(D, H)``; the entropy and bias columns
        start at zero. Logits are ``scale * cos(f, centroid)`` (up to the feature norm).
        """
        cents = torch.cat([retain_centroid[None], forget_centroids], dim=0).float()
        # LayerNorm features have norm ~sqrt(H): this makes a slot's logit ~ scale * cosine.
        cents = F.normalize(cents, dim=-1) * (scale / cents.shape[1] ** 0.5)
        w = torch.zeros_like(self.alter_router.weight)
        w[:, : cents.shape[1]] = cents.to(w.dtype)
        self.alter_router.weight.copy_(w)

    def expert_weights(
        self,
        logits: torch.Tensor,
        entropy: torch.Tensor,
        threshold: float,
        *,
        tau_high: float,
        tau_low: float,
        top_k_high: int,
        top_k_low: int,
    ) -> torch.Tensor:
        """Per-token forget-expert weights ``(B, T, D)`` (slot 0 dropped after top-k)."""
        high = entropy > threshold
        tau = torch.where(high, tau_high, tau_low).to(logits.dtype)
        probs = torch.softmax(logits.float() / tau[..., None], dim=-1)
        slots = probs.shape[-1]
        k = torch.where(high, min(top_k_high, slots), min(top_k_low, slots))
        # Rank of each slot within its token (0 = largest); keep slots ranked below that token's k.
        rank = probs.argsort(dim=-1, descending=True).argsort(dim=-1)
        kept = probs * (rank < k[..., None])
        return kept[..., 1:]

"""``AlterLinear``: a base linear layer plus the asymmetric adapter path.

    y = W0 x + scaling * ( B_r (A x) + sum_d w_d(t) * B_f[d] (A x) )

``A`` (r x d_in) is shared; ``B_r`` (d_out x r) is the retention expert; the forget experts
``B_f[d]`` (d_out x r each) are separate parameters so that a step on subdomain d leaves every
other expert's ``grad`` at ``None`` (AdamW then skips them entirely: no momentum drift). The
forward stacks them into one ``(D, d_out, r)`` tensor and applies all selected experts with a
single matmul: no Python loop over experts.

How the adapter path runs is decided per forward pass by a :class:`Route` that the owning
:class:`~alter.adapters.model.AlterModel` installs with a context manager (never a global).

The adapter is float32 whatever the base weights' dtype (``base_dtype=bfloat16``): its
parameters are created in float32 (AdamW on bf16 parameters would drop every update below
bf16's resolution), its path runs on the input cast to float32, and its output is cast to the
base output's dtype when added. On a float32 base every cast is a no-op (bit-identical results);
under bf16 autocast the matmuls run in bf16 as autocast decides, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

ADAPTER_PREFIX = "alter_"


@dataclass
class Route:
    """How the adapter path runs for one forward pass.

    * ``expert_weights``: ``(B, T, D)`` weights of the forget experts per token (router output),
      or ``None`` for no forget expert.
    * ``oracle_expert``: training on subdomain ``d``: only ``B_f[d]`` runs (weight 1 everywhere),
      so only it receives gradient. Overrides ``expert_weights``.
    * ``grad_retain``: whether ``B_r`` receives gradient (False on forget batches).
    * ``a_grad_mask``: ``(B, T)`` bool; ``A`` receives gradient only through True positions
      (high-entropy tokens). ``None`` means everywhere.
    * ``grad_a``: whether ``A`` receives gradient at all.
    """

    expert_weights: torch.Tensor | None = None
    oracle_expert: int | None = None
    grad_retain: bool = True
    a_grad_mask: torch.Tensor | None = None
    grad_a: bool = True
    # ``[1, w_1, ..., w_D]`` per token, built once per route (no grad) and shared by every layer.
    _mix: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def mix(self, dtype: torch.dtype) -> torch.Tensor:
        """``(B, T, 1 + D)``: the retention expert's weight 1, then ``expert_weights``.

        Without autograd the tensor is built once and reused by every adapted layer of the pass;
        with it, each call builds its own (a cached tensor would tie the layers' graphs).
        """
        cached = not torch.is_grad_enabled()
        if cached and self._mix is not None and self._mix.dtype == dtype:
            return self._mix
        w = self.expert_weights.to(dtype)
        mix = torch.cat([torch.ones_like(w[..., :1]), w], -1)
        if cached:
            self._mix = mix
        return mix


def _in_out(base: nn.Module) -> tuple[int, int]:
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if type(base).__name__ == "Conv1D":  # GPT-2 style: weight is (d_in, d_out)
        d_in, d_out = base.weight.shape
        return d_in, d_out
    raise TypeError(f"cannot adapt a {type(base).__name__}; only nn.Linear and Conv1D")


class AlterLinear(nn.Module):
    """Wraps ``base_layer`` (kept frozen) and adds the adapter path."""

    def __init__(
        self, base_layer: nn.Module, r: int, n_experts: int, scaling: float, dropout: float = 0.0
    ):
        super().__init__()
        self.base_layer = base_layer
        self.d_in, self.d_out = _in_out(base_layer)
        self.r = r
        self.scaling = scaling
        kw = {"dtype": torch.float32, "device": base_layer.weight.device}
        self.alter_A = nn.Parameter(torch.empty(r, self.d_in, **kw))
        nn.init.kaiming_uniform_(self.alter_A, a=math.sqrt(5))  # peft's LoRA A init
        self.alter_B_r = nn.Parameter(torch.zeros(self.d_out, r, **kw))
        self.alter_B_f = nn.ParameterList(
            [nn.Parameter(torch.zeros(self.d_out, r, **kw)) for _ in range(n_experts)]
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.route: Route | None = None
        self.enabled = True
        # Inference only: [B_r; B_f[0]; ...]^T built once and reused while no parameter changes
        # (the key holds each one's storage and in-place version counter).
        self._mixed_right: tuple[tuple, torch.Tensor] | None = None

    @property
    def n_experts(self) -> int:
        return len(self.alter_B_f)

    def stacked_experts(self) -> torch.Tensor:
        """``(D, d_out, r)`` view of the forget experts."""
        return torch.stack(list(self.alter_B_f))

    def _path(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapter's contribution (before scaling) as ``left @ right``: ``left`` ``(..., k)``
        in float32 (the adapter's dtype) whatever ``x``'s, ``right`` ``(k, d_out)``."""
        route = self.route or Route()
        h = self.dropout(x.to(self.alter_A.dtype))
        # Cut A's gradient, never x's: detaching A x itself would also stop the gradient that
        # flows back through this path into earlier layers.
        if not route.grad_a:
            ax = h @ self.alter_A.detach().t()  # (..., r)
        elif route.a_grad_mask is not None:
            # Same value everywhere; A receives gradient only through the masked positions.
            ax = torch.where(
                route.a_grad_mask[..., None], h @ self.alter_A.t(), h @ self.alter_A.detach().t()
            )
        else:
            ax = h @ self.alter_A.t()
        b_r = self.alter_B_r if route.grad_retain else self.alter_B_r.detach()
        if route.oracle_expert is not None:
            # B_r and B_f[d] see the same A x: one product with their sum (r x d_out, cheap),
            # which gives each of them the gradient of its own product.
            return ax, (b_r + self.alter_B_f[route.oracle_expert]).t()
        if route.expert_weights is not None:
            # [A x, w_1 A x, ..., w_D A x] (B, T, (1 + D) r) against [B_r; B_f[0]; ...]^T: the
            # retention expert and every weighted forget expert in one product.
            left = (route.mix(ax.dtype)[..., :, None] * ax[..., None, :]).flatten(-2)
            return left, self._all_experts_right(b_r)
        return ax, b_r.t()

    def _all_experts_right(self, b_r: torch.Tensor) -> torch.Tensor:
        """``((1 + D) r, d_out)``: ``B_r^T`` then each forget expert's ``B_f[d]^T``."""
        if torch.is_grad_enabled():
            return self._build_right(b_r)
        params = (self.alter_B_r, *self.alter_B_f)
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if self._mixed_right is None or self._mixed_right[0] != key:
            self._mixed_right = (key, self._build_right(b_r))
        return self._mixed_right[1]

    def _build_right(self, b_r: torch.Tensor) -> torch.Tensor:
        experts = self.stacked_experts().permute(0, 2, 1).reshape(-1, self.d_out)  # (D*r, d_out)
        return torch.cat([b_r.t(), experts])

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution (before scaling) for input ``x`` ``(..., d_in)``, in
        float32 (the adapter's dtype) whatever ``x``'s."""
        left, right = self._path(x)
        return left @ right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if not self.enabled:
            return y
        left, right = self._path(x)
        if y.dtype == left.dtype:
            # y + scaling * left @ right as one BLAS call (addmm): no (..., d_out) temporaries
            # for the product, the scaling and the sum (measured: bench/profile_step.py).
            flat = torch.addmm(
                y.reshape(-1, self.d_out),
                left.reshape(-1, left.shape[-1]),
                right,
                alpha=self.scaling,
            )
            return flat.view(y.shape)
        return y + (self.scaling * (left @ right)).to(y.dtype)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, r={self.r}, experts={self.n_experts}, scaling={self.scaling}"

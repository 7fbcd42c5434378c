"""Unlearning methods, one file each, dispatched through a literal-dict registry.

``alter`` runs its own two-stage loop (:mod:`alter.methods.alter`); every baseline runs the shared
loop of :mod:`alter.methods.loop`.
"""

from __future__ import annotations

from alter.errors import ConfigError
from alter.methods.alter import ALTER
from alter.methods.asymlora import AsymLoRA
from alter.methods.elm import ELM
from alter.methods.ga import GA
from alter.methods.gd import GD
from alter.methods.lora import LoRA
from alter.methods.npo import NPO
from alter.methods.npo_kl import NPOKL
from alter.methods.rmu import RMU
from alter.methods.simnpo import SimNPO

METHODS: dict[str, type] = {
    "alter": ALTER,
    "ga": GA,
    "gd": GD,
    "npo": NPO,
    "npo_kl": NPOKL,
    "simnpo": SimNPO,
    "rmu": RMU,
    "elm": ELM,
    "lora": LoRA,
    "asymlora": AsymLoRA,
}


def check_method(name: str) -> str:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose from: {', '.join(METHODS)}")
    return name


def describe_methods() -> str:
    """What ``alter methods`` prints: one line per method, then its defaults."""
    import dataclasses

    lines = []
    for name, cls in METHODS.items():
        lines.append(f"{name:8s} {cls.description}")
        opts = [f"lr={cls.default_lr:g}"] if name != "alter" else []
        for f in dataclasses.fields(cls.Config):
            if name == "alter" and f.name not in ("epochs", "lr_A", "lr_B", "beta", "gamma", "lam"):
                continue
            v = f.default
            opts.append(f"{f.name}={v:g}" if isinstance(v, float) else f"{f.name}={v}")
        lines.append(f"{'':8s}   defaults: {', '.join(opts)}")
    lines.append("")
    lines.append(
        "Shared options (every method): --epochs --max-steps --lr --batch-size --seed; "
        "any other option with --set KEY=VALUE or --config FILE.yaml (configs/ has one per method)."
    )
    return "\n".join(lines)

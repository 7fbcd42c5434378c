"""Resumable training state: trainable tensors, optimiser, RNG and step, saved atomically.

A run keeps its state under ``<partial run dir>/resume/``: one ``step-N`` directory per
checkpoint and ``latest.json`` naming the newest complete one (written last, atomically, so a
``kill -9`` in the middle of a save leaves the previous checkpoint in force). Tensors are
safetensors; the optimiser state goes through ``torch.save`` and is read back with
``torch.load(weights_only=True)`` (no pickle of arbitrary objects).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alter.runs import write_json

LATEST = "latest.json"


def save_checkpoint(
    root: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizers: dict[str, torch.optim.Optimizer],
    extra: dict | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` and make it the latest; drop older ones."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"step-{step}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    save_file(
        {k: v.detach().contiguous() for k, v in tensors.items()}, str(path / "tensors.safetensors")
    )
    for name, opt in optimizers.items():
        torch.save(opt.state_dict(), path / f"optimizer-{name}.pt")
    save_file({"torch": torch.get_rng_state()}, str(path / "rng.safetensors"))
    write_json(path / "state.json", {"step": step, **(extra or {})})
    write_json(root / LATEST, {"step": step, "dir": path.name})
    for old in root.glob("step-*"):
        if old != path:
            shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / json.loads(pointer.read_text())["dir"]
    return path if (path / "state.json").is_file() else None


def load_checkpoint(
    path: Path, optimizers: dict[str, torch.optim.Optimizer]
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load optimiser states in place and the RNG; return the tensors and ``state.json``."""
    tensors = load_file(str(path / "tensors.safetensors"))
    for name, opt in optimizers.items():
        opt.load_state_dict(torch.load(path / f"optimizer-{name}.pt", weights_only=True))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    return tensors, json.loads((path / "state.json").read_text())


def truncate_log(log_path: Path, keep) -> None:
    """Drop the metric lines ``keep(record)`` rejects: those logged after the checkpoint a run
    resumes from (they will be logged again)."""
    if not log_path.is_file():
        return
    lines = [
        line
        for line in log_path.read_text().splitlines()
        if line.strip() and keep(json.loads(line))
    ]
    log_path.write_text("".join(line + "\n" for line in lines))

"""Run directories: written under a temporary name, renamed into place only when complete.

An interrupted run therefore never looks finished, and a finished run is never overwritten unless
the caller asks for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from alter.errors import AlterError

COMPLETE_MARKER = "run_complete.json"


class RunDirError(AlterError, ValueError):
    """The output directory cannot be used as asked; the message says why."""


def check_out_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Fail early (before any work) if ``out`` exists and would be clobbered."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a finished run" if (out / COMPLETE_MARKER).exists() else "files"
        raise RunDirError(f"{out}: already holds {what}; pass --overwrite to replace it")
    return out


RESUME_DIR = "resume"


def partial_dir(out: str | Path) -> Path:
    """Where a run is written before it is complete: ``.<name>.partial`` beside ``out``."""
    out = Path(out).expanduser()
    return out.parent / f".{out.name}.partial"


@contextlib.contextmanager
def atomic_dir(
    out: str | Path, *, overwrite: bool = False, meta: dict | None = None, resume: bool = False
):
    """Yield the run's partial directory; on success it replaces ``out`` in one rename.

    ``meta`` (plus anything the caller adds) is written to ``run_complete.json`` last. When the
    work fails, the partial directory is removed, unless it holds resumable state (``resume/``,
    see :mod:`alter.checkpoint`): then it stays for ``resume=True`` to continue from. An
    existing partial directory is an error unless ``resume`` (continue) or ``overwrite`` (start
    over).
    """
    out = Path(out).expanduser()
    tmp = partial_dir(out)
    check_atomic(out, overwrite=overwrite, resume=resume)
    if not resume:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        if not (tmp / RESUME_DIR).is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp / RESUME_DIR, ignore_errors=True)
    write_json(tmp / COMPLETE_MARKER, meta or {})
    tmp.chmod(0o755)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def check_atomic(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """What :func:`atomic_dir` checks before it touches anything (in a distributed run every
    process checks, then only rank 0 enters :func:`atomic_dir`)."""
    out = Path(out).expanduser()
    tmp = partial_dir(out)
    if resume:
        if is_complete(out):
            raise RunDirError(f"{out}: the run already finished; there is nothing to resume")
        if not tmp.is_dir():
            raise RunDirError(f"{out}: no interrupted run to resume (no {tmp.name} beside it)")
        return
    check_out_dir(out, overwrite=overwrite)
    if tmp.exists() and not overwrite:
        raise RunDirError(
            f"{out}: an interrupted run is in {tmp}; pass --resume to continue it or "
            "--overwrite to start over"
        )


def run_dir(out: str | Path, rt, **kwargs):
    """:func:`atomic_dir` on rank 0; on the other processes of a distributed run, the same
    partial directory without writing anything (they only read checkpoints from it)."""
    check_atomic(out, overwrite=kwargs.get("overwrite", False), resume=kwargs.get("resume", False))
    rt.barrier()  # every process has checked before rank 0 creates or empties anything
    if rt.is_main:
        return atomic_dir(out, **kwargs)
    return contextlib.nullcontext(partial_dir(out))


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).is_file()


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)

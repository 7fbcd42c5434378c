"""alter: unlearning for large language models (ALTER and the standard baselines).

import alter
am, tok = alter.unlearn("path/to/target", forget="forget.jsonl", retain="retain.jsonl", out="runs/x")
am, tok = alter.load("path/to/target", adapter="runs/x")
"""

import logging

__version__ = "0.1.0"


class _NoCpuAcceleratorNotice(logging.Filter):
    """DeepSpeed, imported by transformers/accelerate whenever it is installed, warns "Setting
    accelerator to CPU" on every machine without a GPU, even for runs that never use it. Only
    that one record is dropped (its other warnings stay)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Setting accelerator to CPU")


logging.getLogger("DeepSpeed").addFilter(_NoCpuAcceleratorNotice())

__all__ = ["__version__", "load", "unlearn"]


def __getattr__(name: str):
    # Lazy: `import alter` (and `alter --version`) stays fast; torch loads on first real use.
    if name in ("load", "unlearn"):
        from alter import api

        return getattr(api, name)
    raise AttributeError(f"module 'alter' has no attribute {name!r}")

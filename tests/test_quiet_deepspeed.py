"""DeepSpeed's "Setting accelerator to CPU" notice is not printed by alter's runs on a CPU box."""

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed"
)

PROBE = """
import {first}
from deepspeed.accelerator import real_accelerator
real_accelerator.ds_accelerator = None
real_accelerator.get_accelerator()
"""


def _stderr(first: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    res = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout + res.stderr


def test_cpu_accelerator_notice_is_dropped():
    import torch

    if torch.cuda.is_available():
        pytest.skip("DeepSpeed finds the GPU: no notice to drop")
    # Without alter the notice is printed (so the probe reaches it); after `import alter` not.
    assert "Setting accelerator to CPU" in _stderr("logging")
    assert "Setting accelerator to CPU" not in _stderr("alter")

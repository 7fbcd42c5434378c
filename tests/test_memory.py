"""alter.memory: a run's peak resident memory, sampled, and the process's high-water mark."""

import time

import pytest

import alter.memory as memory
from alter.memory import PeakRSS, process_peak_mb, status_mb

pytestmark = pytest.mark.skipif(status_mb("VmRSS") is None, reason="needs /proc (Linux)")


def test_peak_sees_memory_held_inside_the_block_and_freed_before_its_end():
    before = status_mb("VmRSS")
    with PeakRSS(interval=0.005) as mem:
        block = bytearray(300 * 2**20)  # zero-filled: every page is touched
        time.sleep(0.05)
        del block
    after = status_mb("VmRSS")
    rec = mem.record()
    assert rec["peak_rss_mb"] >= before + 250, (before, rec)
    assert after < rec["peak_rss_mb"] - 250  # freed: the peak is not the end state


def test_block_without_allocation_reports_about_the_current_rss():
    with PeakRSS() as mem:
        pass
    rss = status_mb("VmRSS")
    assert abs(mem.record()["peak_rss_mb"] - rss) < 20


def test_without_proc_only_the_process_peak_is_recorded(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "STATUS", tmp_path / "missing")
    with PeakRSS() as mem:
        pass
    rec = mem.record()
    assert rec["peak_rss_mb"] is None
    assert rec["process_peak_rss_mb"] == pytest.approx(process_peak_mb(), abs=0.1)
    assert rec["process_peak_rss_mb"] > 10


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval"):
        PeakRSS(interval=0)

"""Peak RSS as the trainer records it (issue 12)."""
from __future__ import annotations

import sys


def test_peak_rss_is_this_process_not_an_inherited_ru_maxrss():
    """A child of a large parent must report its own peak (ru_maxrss survives execve on Linux)."""
    import subprocess

    from mpo_fast.process_memory import peak_rss_mb

    ballast = bytearray(400 * 2**20)  # make this (the parent) large
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    assert peak_rss_mb() >= 400
    out = subprocess.run([sys.executable, "-c", "from mpo_fast.process_memory import peak_rss_mb; print(peak_rss_mb())"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert float(out) < 300, f"child reports {out} MB: the parent's peak leaked into it"
    del ballast

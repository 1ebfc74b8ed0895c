"""glibc's allocator, told to keep PyTorch's large blocks: set at the start of bnexp.run and bnexp.sweep.

By default glibc serves a block over 128 KiB-32 MiB (its dynamic mmap threshold) with its own mmap and
returns it to the kernel on free, and trims the heap top over 128 KiB: a CPU training step of this net
allocates and frees the same activation buffers (up to 13 MB at an eval batch of 1000) every step, so the
kernel zero-fills and faults them in again every step. Measured on a 200-step depth-19 `bnexp.run`: 4.0-4.6 s
of kernel time by default, 0.74-0.79 s with the allocator keeping its memory, 8-10% less wall time
(`python bench/bench_alloc.py` measures it again through the real command).

What is set (mallopt, the C call behind the MALLOC_*_ environment variables): the mmap threshold at its
maximum (32 MiB on 64-bit glibc: larger blocks are still mmapped), no trimming, and a 64 MiB top pad. The
cost: a process keeps the peak of what it allocated (the net and data at depth 19: about 1 GB) instead
of giving freed memory back; a sweep worker trains one trial after another at the same peak anyway.

Only on glibc (Linux); elsewhere, or with BNEXP_MALLOC=default in the environment (the opt-out), or where
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_ are set (the user's own choice), nothing
is changed. Why not those environment variables: they must be set before the process starts, so a user's
`python -m bnexp.run` would not get them; mallopt applies from the call on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TOP_PAD = 64 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1  # never trim (mallopt takes an int)
USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: dict[str, int] | None = None


def applied() -> dict[str, int]:
    """What `keep_memory` set in this process ({}: glibc's defaults), for a run's metrics.json (`malloc`)."""
    return dict(_applied or {})


def keep_memory() -> dict[str, int]:
    """Tell glibc to keep freed memory (module docstring); returns what was set ({} where nothing was).
    Idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = {}
    if not sys.platform.startswith("linux") or os.environ.get("BNEXP_MALLOC", "").lower() == "default":
        return _applied
    if any(v in os.environ for v in USER_VARS):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for name, param, value in (
        ("mmap_threshold", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("trim_threshold", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ("top_pad", M_TOP_PAD, TOP_PAD),
    ):
        if mallopt(param, value) == 1:  # 1: accepted
            _applied[name] = value
    return _applied

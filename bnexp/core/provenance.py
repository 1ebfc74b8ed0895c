"""Where and with what a result was made: recorded in every metrics.json and W&B run config (`provenance`),
so that timings (`steps_per_s`) and results can be compared across machines and versions."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the bnexp source tree this process runs from, '+dirty' if it has changes; 'unknown' for an
    installed wheel or without git."""
    src = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0 or not (src / "pyproject.toml").is_file():
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "bnexp"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: Any) -> str:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine() or dev.type


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC 7B13', 'Intel(R) Xeon(R) ...'): /proc/cpuinfo on Linux, else platform's
    guess. With `cpu_capability` it keys float results: the same seed rounds differently on another CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch to here ('AVX2', 'AVX512', 'DEFAULT'...)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # an older torch
        return "unknown"


def _version() -> str:
    """bnexp's installed version, read from the package metadata (importing bnexp itself here would make core
    and the package's face import each other)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bnexp")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def provenance(device: Any, started: float | None = None) -> dict[str, Any]:
    """bnexp version, git commit, torch / CUDA / cuDNN versions, device (and the GPU's name), CPU model and
    torch's CPU capability, host, threads, start time (UTC)."""
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "bnexp": _version(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device": str(torch.device(device)),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started or time.time())),
    }

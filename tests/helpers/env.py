"""Paths, tiny settings on real MNIST, config composition as the CLIs do it, and bnexp commands as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Tiny, fast settings on a slice of real MNIST: depth 3, 30 steps; every key is a real override.
TINY = [
    "model.depth=3",
    "trainer.max_steps=30",
    "trainer.val_every=10",
    "trainer.log_every=5",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
    "data.limit_train=1024",
    "data.limit_val=256",
    "data.limit_test=256",
    "data.single_n=20",
    "data.eval_batch_size=256",
    "logger=none",
]


def replace(overrides: list[str], *new: str) -> list[str]:
    """`overrides` with the keys of `new` replaced by their new values (each key once)."""
    keys = {n.split("=", 1)[0] for n in new}
    return [o for o in overrides if o.split("=", 1)[0] not in keys] + list(new)


def compose_cfg(overrides: list[str] | None = None, config_name: str = "config", **kw):
    """Compose a config exactly as the CLIs do (real Hydra, the package's configs, the real schema)."""
    from hydra.core.global_hydra import GlobalHydra

    from bnexp.conf import compose

    GlobalHydra.instance().clear()  # a test may run after an in-process command left Hydra initialized
    return compose(list(overrides or []), config_name, **kw)


def child_env(**extra: str) -> dict:
    """The environment of a bnexp child process: one thread each (2 cores: no OpenMP oversubscription),
    quiet logs; read at call time, after conftest's autouse fixture has set BNEXP_DATA_DIR."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "BNEXP_LOG": "WARNING", **extra}


def bnexp(command: str, *args: str, cwd: Path | str = REPO, timeout: float = 600, env: dict | None = None):
    """Run `python -m bnexp.<command> ARGS` as a user types it; the CompletedProcess (text, captured)."""
    return subprocess.run(
        [sys.executable, "-m", f"bnexp.{command}", *args],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until_caught(p: subprocess.Popen, sig: int, timeout: float = 120) -> None:
    """Until process `p` catches `sig` (the kernel's SigCgt mask in /proc): bnexp's handlers are in. On a loaded
    machine a fixed delay may land before the interpreter has even started (a Ctrl-C in Python's `site`)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        try:
            line = next(ln for ln in Path(f"/proc/{p.pid}/status").read_text().splitlines() if ln.startswith("SigCgt:"))
        except (OSError, StopIteration):
            line = "SigCgt: 0"
        if int(line.split()[1], 16) >> (sig - 1) & 1:
            return
        time.sleep(0.02)

"""A sweep worker frees each trial before the next: a trial's Trainer, LightningModule and data copies hold
each other in reference cycles, which only Python's cyclic collector frees, and a worker that left them to it
grew by about 200 MB a trial at depth 19 (bnexp/sweep/worker.py, Worker.loop). The sweep's own entry point runs
in a subprocess with the automatic collector off, so whether a trial's module is freed depends on the worker
alone: a weak reference to each trial's module must be dead when the worker asks for its next point."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers.env import REPO, TINY

DRIVER = textwrap.dedent(
    """
    import gc, sys, weakref
    gc.disable()  # only the worker's own collection may free a trial
    from bnexp.core import train
    from bnexp.sweep import worker

    modules = []
    build = train.build_module
    def tracked(cfg):
        module = build(cfg)
        modules.append(weakref.ref(module))
        return module
    train.build_module = tracked

    ask = worker.Worker.ask_group
    def asking(self):
        print("ALIVE", sum(r() is not None for r in modules), "OF", len(modules), flush=True)
        return ask(self)
    worker.Worker.ask_group = asking

    from bnexp.sweep.app import main
    sys.argv = ["bnexp.sweep", *sys.argv[1:]]
    main()
    """
)


def test_a_worker_frees_each_trial_before_the_next(tmp_path):
    args = ["sweep=lr_stability", f"sweep.out_dir={tmp_path / 's'}", "sweep.grid.model.bn=[pre]", "sweep.seeds=[0]",
            "sweep.lr.points=3", "sweep.jobs=1", "sweep.progress=false", *TINY]  # fmt: skip
    r = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    alive = [line.split() for line in r.stdout.splitlines() if line.startswith("ALIVE")]
    made = [int(x[3]) for x in alive]
    assert max(made) >= 2, r.stdout  # after the first and second of three trials (the third ends the queue)
    assert all(x[1] == "0" for x in alive), r.stdout  # none outlives its trial

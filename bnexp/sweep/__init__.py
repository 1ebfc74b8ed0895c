"""Learning-rate stability studies on Optuna: the `python -m bnexp.sweep` command and its parts.

spec.py      the study spec (a Hydra config group) and its design: pure functions
storage.py   the Optuna storage and the study in it (created once, design enqueued once)
liveness.py  claims, heartbeats, dead workers, retries: every Optuna private part, behind one module
worker.py    a worker: claim a point, train it through bnexp.core.train.train, record it
records.py   trials -> records -> the report, under the study's recorded rule
app.py       the command (Hydra app): resolve, open, work, report
"""

"""Whose fault a failed trial is: the trial's own (an exception in training, out of memory, a lost heartbeat),
which spends one of the point's `sweep.retries`, or the environment's (the data missing or damaged, a logger
setting W&B refuses, a permission, a missing module, a config Lightning refuses here, a full disk), which does
not: every point would fail the same way, so the worker stops with one line (exit 2) and the point is given
back, waiting. After the user fixes the environment, the same command trains every point.

A study made before this rule may hold points whose retries were all spent on environment failures:
`spent_on_environment` recognises those failures by their recorded reason, so they do not count as retries.
"""

from __future__ import annotations

from typing import Any

from bnexp.cli import UsageError, library_refusal, one_line

ENV_REASON = "environment: "  # fail_reason prefix of a trial given back because its environment failed
# exception types (by name, as fail_reason records them: "DataError: ...") that are the environment's fault
_ENV_TYPES = {
    "DataError", "ConfigError", "UsageError", "FileWriteError", "ImportError", "ModuleNotFoundError",
    "PermissionError", "FileNotFoundError", "NotADirectoryError", "IsADirectoryError", "MisconfigurationException",
    "AuthenticationError", "CommError",
}  # fmt: skip


class EnvironmentFailure(UsageError):
    """A trial could not run because of its environment; the message names the problem and the fix."""


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen and len(seen) < 10:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def environment_problem(e: BaseException) -> str | None:
    """The one line for an exception that is the environment's fault, else None (the trial's own failure)."""
    refused = library_refusal(e)  # a Lightning strategy/accelerator this machine cannot run, a W&B setting
    if refused is not None:
        return refused
    for x in _chain(e):
        name, module = type(x).__name__, type(x).__module__ or ""
        if isinstance(x, (UsageError, ImportError)) or (isinstance(x, OSError) and x.errno is not None):
            return f"{name}: {one_line(x)}" if not isinstance(x, UsageError) else one_line(x)
        if name in _ENV_TYPES or module.startswith("wandb"):  # Lightning's MisconfigurationException, W&B's errors
            return f"{name}: {one_line(x)}"
    return None


def spent_on_environment(reason: str | None) -> bool:
    """Whether a FAIL trial's recorded `fail_reason` is an environment failure (given back, or recorded as a
    plain failure by an older bnexp): such a failure spends no retry."""
    if not reason:
        return False
    return reason.startswith(ENV_REASON) or reason.split(":", 1)[0] in _ENV_TYPES


def stop_if_environment(worker: Any, trials: list[Any], e: BaseException) -> None:
    """If `e` is the environment's fault: give `trials`' points back (waiting, no retry spent) and raise
    EnvironmentFailure, which stops the worker with one line. Else return: the trial's own failure."""
    from optuna.trial import TrialState

    problem = environment_problem(e)
    if problem is None:
        return
    for t in trials:
        fixed = dict(t.params)  # the point: every param was suggested (fixed by the queue) before training
        t.set_user_attr("fail_reason", ENV_REASON + problem[:480])
        t.set_user_attr("returned", True)
        worker.study.tell(t, state=TrialState.FAIL)
        worker.study.enqueue_trial(fixed, user_attrs={"key": t.user_attrs.get("key"), "attempt": 0})
    raise EnvironmentFailure(
        f"trial {trials[0].number} could not run: {problem[:400]} -- not the trial's result: its point is waiting "
        "again and no retry was spent; fix this, then rerun the same command"
    ) from None


def oom_kind(e: BaseException) -> str | None:
    """The kind of out-of-memory error: CUDA (torch.OutOfMemoryError), other (cuDNN/cuBLAS/CPU allocator), None."""
    import torch

    if isinstance(e, torch.OutOfMemoryError):  # = torch.cuda.OutOfMemoryError
        return "CUDA out of memory"
    msg = str(e).lower()
    if isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg):
        return "out of memory"
    return None


def fail_reason(e: BaseException) -> str:
    """The one line a FAIL trial keeps (user attr fail_reason). Out of memory gets a fixed prefix, so a
    report can count OOMs apart from bugs, and says what to shrink."""
    msg = one_line(e)[:500]
    kind = oom_kind(e)
    if kind is None:
        return f"{type(e).__name__}: {msg}"
    detail = msg.removeprefix("CUDA out of memory").lstrip(". ") or type(e).__name__
    return f"{kind}: {detail} (try a smaller data.batch_size or data.eval_batch_size, or data.on_device=false)"


def free_accelerator_memory() -> None:
    """Release a failed trial's memory before the next trial (its Trainer and module cycles hold its tensors)."""
    import gc

    gc.collect()  # the failed trial's Trainer/module cycles hold its CUDA tensors
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass

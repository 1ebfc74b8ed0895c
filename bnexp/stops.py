"""Stop signals: one policy for every bnexp command (bnexp.cli re-exports it; no imports but the standard
library, so that `python -m bnexp.<command>` installs it before anything slow is imported).

Before training begins (imports, composing, opening or creating a study), a stop signal ends the command at once,
in one line: a KeyboardInterrupt raised in the middle of an import leaves a traceback, or a half-imported module
that fails later with an unrelated error. Nothing bnexp writes is lost to that, as nothing is to kill -9: its
files are written atomically, SQLite commits whole, a half-made study is recognised by the next command.
Once training begins the trainer's own stop takes over (bnexp.run: Lightning's; a sweep worker: its flag,
checked at every batch) and checkpoints; signals after a stop has begun are ignored (`stopping`).

The stop signals are SIGINT and SIGTERM, and SIGHUP (a closed terminal or ssh session) and SIGQUIT (Ctrl-\\),
which stop as SIGTERM does: once training has begun they are handed to whatever handles SIGTERM then
(Lightning's graceful stop, a sweep worker's flag), so they checkpoint and say how to resume, exit 130.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

STOP_EXIT = 130  # every stop by a signal, first or repeated, whichever stop signal
_STARTUP: dict[int, Any] = {}  # the handlers before ours, restored when training begins
# stopped as SIGTERM is, whoever handles SIGTERM at the time (absent on Windows)
AS_SIGTERM = tuple(getattr(signal, n) for n in ("SIGHUP", "SIGQUIT") if hasattr(signal, n))
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *AS_SIGTERM)


_SAID = False  # stopping(say=True) has said its line in this process


def _stop_now(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"bnexp: stopped ({name}) before training began; rerun the same command to start again\n".encode())
    os._exit(STOP_EXIT)


def _as_sigterm(signum: int, frame: Any) -> None:
    """SIGHUP/SIGQUIT: do what SIGTERM would do now (a graceful stop once training has begun, at once before)."""
    h = signal.getsignal(signal.SIGTERM)
    if h is signal.SIG_IGN:  # a stop is already being saved (`stopping`)
        return
    if h is _stop_now:  # before training: one line, exit 130
        _stop_now(signum, frame)
    elif callable(h):
        h(signal.SIGTERM, frame)  # Lightning's stop, a sweep worker's flag: checkpoint, "rerun to resume"
    else:  # SIGTERM's default (no training in flight): end as a SIGTERM would
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal handlers live there


def stop_at_once_until_training() -> None:
    """Install the before-training policy above."""
    if _main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not _stop_now:
                _STARTUP.setdefault(sig, signal.getsignal(sig))
                signal.signal(sig, _stop_now)
        for sig in AS_SIGTERM:  # for the whole command: they follow SIGTERM's handler of the moment
            signal.signal(sig, _as_sigterm)


def training_begins() -> None:
    """Hand SIGINT/SIGTERM back to what was there before (Python's KeyboardInterrupt, the default SIGTERM that
    Lightning's fit replaces with its graceful stop), unless a sweep worker has installed its own meanwhile."""
    if _main_thread():
        for sig, before in list(_STARTUP.items()):
            if signal.getsignal(sig) is _stop_now:
                signal.signal(sig, before if before is not None else signal.SIG_DFL)
        _STARTUP.clear()


def stopping(say: bool = False) -> None:
    """A stop has begun (its checkpoint is written, or being written): later SIGINT/SIGTERM are ignored, so the
    stop ends as it began, with its one line and exit 130 (not 143, not an "Exception ignored" trace). SIG_IGN,
    not a Python handler: interpreter shutdown puts Python handlers back to the default (kill) before the exit
    status is delivered. `say`: print that the signal was received and what stops at once, once per process:
    Lightning's fit puts back the handler it found when it ends (a sweep worker's), so a signal after that
    reaches the worker's handler again while the stop is still being said."""
    global _SAID
    if say and not _SAID:
        _SAID = True
        os.write(2, b"bnexp: already stopping (the work in flight is being saved); kill -9 stops at once\n")
    if _main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

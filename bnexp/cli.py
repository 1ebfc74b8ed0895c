"""The error layer every bnexp command shares: bad input is one line `bnexp: error: ...` and exit status 2.

Bad input is any `UsageError` (`ConfigError` for settings, `bnexp.core.data.DataError` for the data), and
Hydra's / OmegaConf's own compose errors (an unknown key, a wrong type, a missing group option). Each is
turned into one line that names the fix; nothing else is printed after it. A real crash keeps its traceback.

Directories a command writes (`hydra.run.dir`, `sweep.out_dir`, report `--out`) that cannot be made (a
regular file in the way, no permission, a read-only or full disk) are one line naming the path, before any
work. A file over `ulimit -f` raises SIGXFSZ, whose default action kills a process mid-write; CPython ignores
it at startup, and `guard` ignores it again explicitly (an embedding interpreter may not), so the write fails
with EFBIG and becomes the one line of the atomic writer (bnexp.files), the previous file left whole.

Paths: a relative `BNEXP_DATA_DIR` means the directory it named where the command was typed, so
`absolute_env_paths()` makes it absolute before any child process (DDP ranks, sweep workers, submitit
jobs, test subprocesses in other directories) inherits it.

Imports here stay light (no torch, Lightning or Optuna): every command imports this module first.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from bnexp.stops import STOP_EXIT, stop_at_once_until_training, stopping, training_begins  # noqa: F401 (re-exported)

PATH_ENV_VARS = ("BNEXP_DATA_DIR",)


class UsageError(Exception):
    """Bad input from the user; its message names the fix. Ends a command with exit status 2."""


class ConfigError(UsageError, ValueError):
    """A bad setting; the message names the allowed values or the fix."""


# scheme://user:password@host -> scheme://user:***@host, also inside longer text (command lines, errors) and in
# the escaped form Hydra writes (`postgresql\://u\:pw@host`). A password runs to the first `@`, as SQLAlchemy
# reads it (`/`, `:`, `#`, `%` included); one with a space is masked where it was registered (`remember_secret`).
# An unencoded `@` inside a password (`u:p@ss@host`: SQLAlchemy reads `p`, host `ss@host`) is masked to the
# last `@` before the host, so no part of it shows.
_CREDENTIALS = re.compile(r"(\b[a-zA-Z][\w+.-]*\\?://[^\s:/@'\"\\]*)(\\?:)(?:[^\s@'\"]|@(?=[^\s/@'\"]*@))*@")
_SECRETS: set[str] = set()  # every password this process has met, in each form it may be written in
_HYDRA_ESCAPED = re.compile(r"([\\()\[\]{}:=, \t])")  # what Hydra escapes in an override value it writes back


def _password_of(url: str) -> tuple[str, str] | None:
    """(password as typed in the URL, as SQLAlchemy decodes it), or None when `url` carries none."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None
    if not u.password:
        return None
    typed = url.partition("://")[2].partition(":")[2].split("@", 1)[0]  # user:PASSWORD@host, as make_url splits it
    return typed, str(u.password)


def unencoded_at(url: str) -> str | None:
    """The password as the user meant it, when it holds an unencoded `@` (`u:p@ss@host`: SQLAlchemy reads the
    password `p` and the host `ss@host`); else None. An `@` in the query (`...host/db?x=a@b`) is not one."""
    rest = url.partition("://")[2]
    if rest.count("@") < 2:
        return None
    first, last = rest.index("@"), rest.rindex("@")
    if "/" in rest[first:last] or ":" not in rest[:last]:
        return None
    return rest[:last].partition(":")[2]


def check_storage_url(url: str, key: str = "sweep.storage") -> None:
    """Refuse a storage URL whose password holds an unencoded `@`: it would open another host (and print
    part of the password as one)."""
    if unencoded_at(url) is not None:
        raise UsageError(
            f"{key}: the password holds an unencoded '@', so the URL's host would start inside it; write each "
            "'@' in the password as %40 (urllib.parse.quote(password, safe='') encodes every character that needs it)"
        )


def remember_secret(url: str | None) -> None:
    """Register the password of storage URL `url`: `redact` masks it in every form bnexp, Hydra or a log
    may write it (as typed, decoded, percent-encoded, Hydra-escaped), whatever characters it holds."""
    from urllib.parse import quote, quote_plus

    pw = _password_of(url) if url else None
    if pw is None:
        return
    meant = unencoded_at(url or "")
    for form in {*pw, quote(pw[1], safe=""), quote_plus(pw[1]), quote(pw[1]), *([meant] if meant else [])}:
        if len(form) >= 3:  # a one- or two-letter password would mask every "ab" in the text; the regex covers it
            _SECRETS.update({form, _HYDRA_ESCAPED.sub(r"\\\1", form)})


def mask_url(url: str) -> str:
    """A storage URL with its password as ***: `postgresql://bnexp:***@host/db` (SQLAlchemy's own rendering)."""
    from sqlalchemy.engine import make_url

    remember_secret(url)
    if _password_of(url) is None:
        return redact(url)
    return make_url(url).render_as_string(hide_password=True)


def redact(text: str) -> str:
    """Any URL's password in `text` as ***: `postgresql://bnexp:***@host/db`."""
    text = str(text)
    for s in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(s, "***")
    return _CREDENTIALS.sub(r"\1\2***@", text)


_HIDDEN: dict[str, str] = {}  # masked storage URL -> the URL the user gave (this process only)


def hide_storage_password(argv: list[str]) -> list[str]:
    """`sweep.storage=<URL with a password>` on a command line -> the URL masked; `unmask_url` gives it back.

    Hydra writes the command line back (multirun.yaml, its `#0 : ...` job lines, each job's overrides) and W&B
    records it: none of them ever holds the password. The storage opens with the real URL (bnexp.sweep.storage),
    and local workers get it in $BNEXP_STORAGE (bnexp.sweep.local), never on a command line."""
    out = []
    for a in argv:
        key, sep, value = a.partition("=")
        if sep and key.lstrip("+~") == "sweep.storage":
            url = value.strip("'\"")
            check_storage_url(url, key.lstrip("+~"))
            if _password_of(url) is not None:
                remember_secret(url)
                _HIDDEN[mask_url(url)] = url
                a = f"{key}={mask_url(url)}"
        out.append(a)
    return out


def unmask_url(url: str) -> str:
    """The URL `hide_storage_password` masked as `url` (else `url` itself)."""
    return _HIDDEN.get(url, url)


def redact_logs() -> None:
    """Every log record (Hydra's job lines, Optuna's, bnexp's) passes `redact` before any handler sees it."""
    old = logging.getLogRecordFactory()
    if getattr(old, "_bnexp_redacts", False):
        return

    def factory(*args: Any, **kw: Any) -> logging.LogRecord:
        record = old(*args, **kw)
        try:
            msg = record.getMessage()
        except Exception:
            return record
        masked = redact(msg)
        if masked != msg:
            record.msg, record.args = masked, ()
        return record

    factory._bnexp_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split())


_WARNED: set[str] = set()


def warn(msg: str) -> None:
    """Odd but usable input: one line `bnexp: warning: ...` on stderr, once per process (a config is validated
    once per trial of a sweep; the warning is said once)."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        print(f"bnexp: warning: {redact(msg)}", file=sys.stderr, flush=True)


def fail(msg: str, code: int = 2) -> NoReturn:
    print(f"bnexp: error: {redact(msg)}", file=sys.stderr, flush=True)
    sys.exit(code)


def absolute_env_paths() -> None:
    """Make relative path variables absolute against the current directory, once, for every child process."""
    for var in PATH_ENV_VARS:
        v = os.environ.get(var)
        if v and not os.path.isabs(os.path.expanduser(v)):
            os.environ[var] = os.path.abspath(os.path.expanduser(v))


# an OSError with one of these, on a path, is the machine's or the user's (where files go), not a bug
_PATH_ERRNOS = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                errno.EFBIG, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}  # fmt: skip


def ignore_sigxfsz() -> None:
    """A file over `ulimit -f` fails its write with EFBIG (an error we report) instead of killing the process."""
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


_PSEUDO_FS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "securityfs", "debugfs", "tracefs", "configfs", "bpf"}


def _pseudo_fs(path: Path) -> str | None:
    """The type of the kernel's virtual file system `path` is on (proc, sysfs...: root may "write" there by
    permission bits, yet no file can be made), else None."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return None
    best = max((m for m in mounts if len(m) == 2 and path.is_relative_to(m[0])), key=lambda m: len(m[0]), default=None)
    return best[1] if best is not None and best[1] in _PSEUDO_FS else None


def dir_problem(path: str | os.PathLike) -> str | None:
    """Why bnexp could not make and write into directory `path` (None: it can): the nearest existing part of
    the path is a regular file, or a directory this user cannot write."""
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    for part in (p, *p.parents):
        if not os.path.lexists(part):
            continue
        if not part.is_dir():
            return f"{part} is a regular file" if part.is_file() else f"{part} is not a directory"
        fs = _pseudo_fs(part)
        if fs is not None:
            return f"{part} is on a {fs} file system, which takes no new files"
        if not os.access(part, os.W_OK | os.X_OK):
            return f"{part} is not writable by this user"
        return None
    return None


def check_writable_dir(path: str | os.PathLike, key: str) -> None:
    """Refuse, naming the path, a directory a command would fail to make or write into (check before work)."""
    why = dir_problem(path)
    if why is not None:
        raise UsageError(f"cannot write into {path}: {why}; set {key} to a directory you can write")


def explain_os_error(e: BaseException, key: str) -> str | None:
    """One line for an OSError on a path (also a logging handler's ValueError around one), else None."""
    oe = e if isinstance(e, OSError) else e.__cause__
    if isinstance(oe, OSError) and oe.errno == errno.ENOENT and oe.filename:  # mkdir -p under /proc, /sys
        why = dir_problem(oe.filename)
        return f"cannot write {oe.filename}: {why}; set {key} to a directory you can write" if why else None
    if not isinstance(oe, OSError) or oe.errno not in _PATH_ERRNOS or not oe.filename:
        return None
    why = dir_problem(oe.filename if oe.errno in (errno.ENOTDIR, errno.EEXIST) else Path(oe.filename).parent)
    if why is not None:
        return f"cannot write {oe.filename}: {why}; set {key} to a directory you can write"
    return f"cannot write {oe.filename} ({oe.strerror}); free disk space or fix the path's permissions ({key})"


_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# SQLite's words for a write the disk refused (SQLITE_IOERR from EFBIG/ENOSPC, SQLITE_FULL)
_FULL_WORDS = ("disk i/o error", "database or disk is full", "no space left on device", "file too large")


def disk_full(e: BaseException, what: str = "its files") -> str | None:
    """One line for a write the disk refused (full, a quota, a file-size limit as `ulimit -f` sets), anywhere
    in `e`'s chain (Optuna wraps SQLite's OperationalError in StorageInternalError), else None."""
    x: BaseException | None = e
    for _ in range(8):
        if x is None:
            break
        text = str(x).lower()
        if (isinstance(x, OSError) and x.errno in _FULL_ERRNOS) or any(w in text for w in _FULL_WORDS):
            detail = re.sub(r"\s*\(Background on this error at: \S+\)", "", one_line(x).split(" [SQL:")[0])[:200]
            return (
                f"the disk refused a write to {what} ({detail}): it is full, over a quota, or past a file-size "
                "limit (`ulimit -f`); free space and rerun the same command (it goes on where it stopped)"
            )
        x = x.__cause__ or x.__context__
    return None


_LIBRARIES = ("lightning", "wandb", "torch_xla", "deepspeed")  # whose refusal of a setting is the user's to fix


def library_refusal(e: BaseException) -> str | None:
    """One line for a setting a library refuses here (a Lightning strategy or accelerator this machine cannot
    run, a W&B project or run id it does not take), else None (a crash keeps its traceback). Recognised by
    where it was raised: a ValueError/ImportError/library error from inside Lightning or W&B."""
    x: BaseException | None = e
    for _ in range(5):
        if x is None:
            break
        module = type(x).__module__ or ""
        tb, origin = x.__traceback__, ""
        while tb is not None:  # the innermost frame: where it was raised
            origin, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
        lib = next((m for m in _LIBRARIES if module.startswith(m) or f"/{m}/" in origin), None)
        if lib and (isinstance(x, (ValueError, ImportError, TypeError)) or module.startswith(lib)):
            if "Exception" in type(x).__name__ or "Error" in type(x).__name__:
                return f"{lib} refuses this config here: {one_line(x)[:400]} (change that setting and rerun)"
        x = x.__cause__ or x.__context__
    return None


def _schema_fields(node: Any) -> dict[str, dataclasses.Field] | None:
    return {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else None


def explain_hydra_error(e: BaseException, schema: Any, prog: str) -> str:
    """Hydra says "Could not override 'model.bm'. To append ... use +model.bm": name the valid keys instead.

    `schema` is the root dataclass of the command's config (it lists the keys that exist)."""
    msg = one_line(e)
    m = re.search(r"Could not override '([\w.]+)'", msg)
    if m:
        key = m.group(1)
        node: Any = schema
        parts = key.split(".")
        for part in parts[:-1]:
            fields = _schema_fields(node)
            f = fields.get(part) if fields else None
            if f is None:
                node = None  # not under bnexp's schema (e.g. hydra.launcher.*, a grid axis): keep Hydra's words
                break
            node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        fields = _schema_fields(node) if node is not None else None
        if fields is not None:
            where = ".".join(parts[:-1]) or "the top level"
            return f"unknown config key '{key}'; valid keys under {where}: {', '.join(fields)}"
    m = re.search(r"Could not override '(sweep\.grid\.[\w.]+)'", msg)
    if m and "not in struct" in f"{msg} {e.__cause__}":  # a grid axis the spec does not have yet
        return f"{m.group(1)} is not an axis of this spec's grid; add a new axis with a leading +: +{m.group(1)}=[...]"
    msg = msg.split(" Config search path:")[0]
    msg = re.sub(r"\. To append to your config use [^\s:]+", "", msg)  # a typo wants fixing, not appending
    if e.__cause__ is not None:  # e.g. "Value 'abc' of type 'str' could not be converted to Integer"
        msg += ": " + str(e.__cause__).splitlines()[0]
    return msg + f" ({prog} --cfg job shows every key and value)"


def guard(
    fn: Callable[[], Any], schema: Any = None, prog: str = "python -m bnexp.run", out_key: str | None = None
) -> Any:
    """Run a command; bad input becomes one line and exit status 2 (Hydra's own error lines suppressed).

    `out_key` names the setting that says where the command writes (default: from the schema, Hydra's run dir)."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    ignore_sigxfsz()
    stop_at_once_until_training()
    absolute_env_paths()
    redact_logs()
    remember_secret(os.environ.get("BNEXP_STORAGE"))
    # where the command's files go: Hydra makes this directory (and its log file) before the job starts
    if out_key is None:
        fields = _schema_fields(schema) if schema is not None else None
        out_key = "sweep.out_dir" if fields and "sweep" in fields else "hydra.run.dir (with -m: hydra.sweep.dir)"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra raise, so we can tell bad input from crashes
    try:
        return fn()
    except UsageError as e:
        fail(one_line(e))
    except (HydraException, OmegaConfBaseException) as e:
        # a UsageError raised inside a Hydra job arrives wrapped by some launchers
        inner = e.__cause__ if isinstance(e.__cause__, UsageError) else None
        fail(one_line(inner) if inner else explain_hydra_error(e, schema, prog))
    except yaml.YAMLError as e:  # a config file of the user's (a spec in --config-dir) that does not parse
        mark = getattr(e, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a config file"
        fail(f"{where} is not valid YAML ({getattr(e, 'problem', None) or one_line(e)}); fix the file")
    except (OSError, ValueError) as e:  # Hydra could not make the run dir or open its log file there
        msg = explain_os_error(e, out_key) or disk_full(e) or library_refusal(e)
        if msg is None:
            raise
        fail(msg)
    except Exception as e:  # Lightning or W&B refusing a setting (MisconfigurationException, UsageError); else a crash
        msg = disk_full(e) or library_refusal(e)  # a full disk under a storage write (Optuna's StorageInternalError)
        if msg is None:
            raise
        fail(msg)

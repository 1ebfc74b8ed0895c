"""sweep.json: a sweep's out dir's record of its study, written and read here only (no torch, Optuna or W&B).

`python -m bnexp.sweep` writes it once, when it creates the study (or finds none recorded); `bnexp.report DIR`,
`bnexp.status DIR`, `bnexp.load(DIR)` and `bnexp.dashboard --study-name DIR` read it to find the study. A leaf
module (it imports only cli and files), so tracking may read it without importing the sweep.

Older sweeps wrote fewer keys: before the W&B group and the command were recorded, sweep.json held only
`study`, `storage` and `design_size`; those files are still read (the missing keys read as None).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bnexp.cli import ConfigError, one_line
from bnexp.files import write_json_atomic

NAME = "sweep.json"


@dataclass(frozen=True)
class SweepFile:
    """What sweep.json holds. `storage` never holds a password (masked as `***`, or a SQLite path relative to
    the out dir); `command` is the sweep command that made the study, a password redacted."""

    study: str
    storage: str
    design_size: int | None = None
    wandb_group: str | None = None  # name-spechash: one study's W&B group, whatever else shares its name
    command: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> SweepFile:
        """From sweep.json's parsed content; TypeError/KeyError where it is not the object a sweep writes."""
        if not isinstance(obj, dict):
            raise TypeError(f"not an object but {type(obj).__name__}")
        study, storage = obj["study"], obj["storage"]
        if not (isinstance(study, str) and isinstance(storage, str)):
            raise TypeError("its storage and study are not text")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in obj.items() if k in known}  # a key this version does not know is ignored
        for k in ("wandb_group", "command"):
            if not isinstance(kw.get(k), (str, type(None))):
                kw[k] = None  # unreadable: as if not recorded
        return cls(**kw)

    def write(self, sweep_dir: str | Path) -> Path:
        return write_json_atomic(path(sweep_dir), self.to_json())


def path(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / NAME


def exists(sweep_dir: str | Path) -> bool:
    """Whether `sweep_dir` is a sweep's out dir (holds sweep.json)."""
    return path(sweep_dir).is_file()


def read(sweep_dir: str | Path) -> SweepFile:
    """`sweep_dir`'s record; a damaged file (cut off, garbled bytes, not the object a sweep writes) is a
    ConfigError naming how to rebuild without it."""
    f = path(sweep_dir)
    try:
        return SweepFile.from_json(json.loads(f.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        db = Path(sweep_dir) / "study.db"
        where = f"sqlite:///{db.resolve()}" if db.is_file() else "URL"
        raise ConfigError(
            f"{f} is damaged ({one_line(e)[:120]}); rebuild with --storage {where} --study-name NAME "
            f"--out {sweep_dir} (a wrong NAME lists the studies there)"
        ) from None

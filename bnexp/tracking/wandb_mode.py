"""Weights & Biases credentials and mode: never a prompt, also on a tty (see bnexp.tracking.wandb_runs).

`resolve_mode(cfg)` is online, offline or disabled for one run: `logger.mode` when not auto, then WANDB_MODE
(WANDB_DISABLED), then whether W&B finds credentials without asking (`has_credentials`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from bnexp.cli import ConfigError

log = logging.getLogger("bnexp.tracking.wandb_runs")


def _netrc_has_key() -> bool:
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def has_credentials() -> bool:
    """Whether W&B finds credentials without asking (env, settings files, ~/.netrc): `wandb.login(prompt=False,
    verify=False)`, W&B's public call that never prompts and makes no request. Older wandb without `prompt`:
    the documented places."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # wandb < 0.22: no `prompt` argument
        return _netrc_has_key()
    except Exception as e:  # a malformed key: say so, log offline rather than fail
        log.warning("W&B credentials unusable (%s); logging offline", " ".join(str(e).split()))
        return False


_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def resolve_mode(cfg: DictConfig) -> str:
    """online | offline | disabled for this run; never prompts.

    Precedence: `logger.mode` when not auto, then WANDB_MODE (WANDB_DISABLED), then whether W&B finds
    credentials. A forced online mode without credentials is a ConfigError naming `wandb login`.
    """
    mode = str(cfg.logger.mode)
    if mode == "auto":
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1"):
            env = "disabled"
        if env:
            if env not in _ENV_MODES:
                raise ConfigError(f"WANDB_MODE={env!r} is not a W&B mode; use online, offline or disabled")
            mode = _ENV_MODES[env]
        else:
            return "online" if has_credentials() else "offline"
    if mode == "online" and not has_credentials():
        raise ConfigError(
            "W&B online mode needs a login: run `wandb login` (or set WANDB_API_KEY), "
            "or use logger.mode=offline (sync later with `wandb sync`)"
        )
    return mode

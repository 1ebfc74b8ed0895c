"""Every command is a console script whose --help runs; the dashboard's --dry-run needs no entity."""

import re
import shutil
import subprocess

import pytest
from helpers.env import REPO, bnexp, child_env

# [project.scripts] read as text: tomllib is Python 3.11+, and bnexp supports 3.10
_SECTION = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
SCRIPTS = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', _SECTION, re.M))
COMMANDS = ["run", "sweep", "report", "status", "dashboard", "compare", "lr-find"]


def test_every_command_is_a_console_script():
    assert sorted(SCRIPTS) == sorted(f"bnexp-{c}" for c in COMMANDS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_help(script):
    exe = shutil.which(script)
    if exe is None:
        pytest.skip(f"{script} not installed in this environment: pip install -e '.[dev]'")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, env=child_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"usage|python -m bnexp", r.stdout, re.I)


def test_dashboard_dry_run_without_entity():
    env = {k: v for k, v in child_env().items() if k != "WANDB_ENTITY"}
    r = bnexp("dashboard", "--dry-run", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "<your-entity>/bnexp" in r.stdout and "[" in r.stdout  # the panels, one per line
    r = bnexp("dashboard", env=env)  # saving needs an entity: one line, exit 2
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--entity" in r.stderr

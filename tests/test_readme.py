"""The README starts in one screen: its first ```bash block (the one .ci/run executes verbatim) is within its
first 40 lines and holds the set-up, the main job and the tests; every relative link in README, CONTRIBUTING
and docs/ points at a file that exists."""

import re
import subprocess

from helpers.env import REPO

README = REPO / "README.md"


def test_first_bash_block_is_on_the_first_screen_and_is_what_ci_runs():
    lines = README.read_text().splitlines()
    start = lines.index("```bash")
    assert start < 40
    block = lines[start + 1 : lines.index("```", start + 1)]
    assert start + 1 + len(block) < 40
    commands = [line for line in block if line and not line.startswith("#")]
    assert any(c.startswith("python -m venv .venv") and "pip install -e" in c for c in commands)
    assert "python -m bnexp.run model.bn=pre" in commands and commands[-1] == "python -m pytest -n 2"
    awk = r"/^```bash$/ {on=1; next} on && /^```$/ {exit} on {print}"  # .ci/run's own extraction
    ci = subprocess.run(["awk", awk, str(README)], capture_output=True, text=True, check=True).stdout
    assert ci.splitlines() == block
    assert awk in (REPO / ".ci" / "run").read_text()


def test_relative_links_resolve():
    pages = [README, REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"

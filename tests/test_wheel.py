"""bnexp as a user elsewhere gets it: a wheel built from this tree, installed (not editable) into a fresh venv,
run from another directory: the configs come from the installed package (pkg://bnexp.conf), not this repo."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from helpers.env import REPO, TINY, child_env, replace


def test_a_wheel_installed_elsewhere_trains_and_sweeps(tmp_path):
    src, dist, venv, work = tmp_path / "src", tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    # built from a copy of what the wheel is made of, so the build leaves nothing in this checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "bnexp", src / "bnexp", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = dist.glob("bnexp-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # the dependencies (torch, Lightning, Hydra, ...) from this environment; bnexp only from the wheel
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    where = subprocess.check_output([str(py), "-c", "import bnexp.conf, sys; print(bnexp.conf.__file__)"], cwd=work)
    assert str(venv) in where.decode(), where  # the installed package, not this checkout

    env = child_env()
    run = replace(TINY, "trainer.max_steps=2", "trainer.val_every=1")
    r = subprocess.run(
        [str(py), "-m", "bnexp.run", *run], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "steps=2" in r.stdout and list((work / "outputs" / "runs").glob("*/*/metrics.json"))

    sweep = [
        *run,
        "sweep.lr.points=1",
        "sweep.seeds=[0]",
        "sweep.jobs=1",
        "sweep.grid.model.bn=[off,pre]",
        "sweep.progress=false",
    ]
    r = subprocess.run([str(venv / "bin" / "bnexp-sweep"), *sweep], cwd=work, env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "study lr_stability: 2 trials" in r.stdout
    assert (work / "outputs" / "sweeps" / "lr_stability" / "report.md").is_file()

"""bench/gpu_check.py, the GPU acceptance run, works: its every section runs on the CPU (--device cpu --quick)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.env import REPO, child_env


@pytest.mark.slow  # default-suite time: gpu_check's sections also run on CPU here with -m slow (31 s)
def test_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)]
    r = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rec = json.loads(out.read_text())
    s = rec["sections"]
    assert rec["ok"] is True and rec["device"] == "cpu" and rec["compile_backend"] == "aot_eager"
    assert list(s) == ["gpu_tests", "agreement", "step", "trial", "study", "population", "compile"]
    assert all(v["ok"] and v["wall_s"] > 0 and "error" not in v for v in s.values()), s
    t = s["gpu_tests"]  # pytest -m gpu ran (every test skipped: no CUDA) and was read back from its JUnit XML
    assert t["returncode"] == 0 and t["tests"] == t["skipped"] > 0 and t["failed_tests"] == []
    assert s["step"]["eager"]["plain_ms"] > 0 and s["step"]["eager"]["harness_ms"] > 0
    assert s["trial"]["eager"]["ok"] and s["trial"]["eager"]["wall_s"] > 0
    assert set(s["population"]) >= {"K=2", "K=3"} and s["population"]["K=3"]["ms_per_model_step"] > 0
    assert s["study"]["points"] == 3 and s["study"]["solo_measured"] == 1 and s["study"]["extrapolated"]
    c = s["compile"]  # the sweep command twice: the compiled arm compiles in its first trial only
    assert c["eager"]["compile"] == ["none"] and c["compiled"]["new_graphs"][0] > 0
    assert c["compiled"]["new_graphs"][1:] == [0, 0] and c["steady_ratio"] > 0
    a = s["agreement"]  # population members == solo runs, compiled == eager, on this device
    assert a["population_vs_solo_float64"]["max_rel_diff"] <= 1e-6
    assert a["population_compiled_vs_eager_float64"]["max_rel_diff"] <= 1e-9

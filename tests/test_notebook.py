"""docs/analysis.ipynb runs headless, top to bottom, on the committed reference studies (nbclient, a real
kernel), loads every one of them and draws its figures; it is committed with its outputs, so a reader on the
web sees the figures without running it."""

import nbformat
from helpers.env import REPO
from nbclient import NotebookClient

NOTEBOOK = REPO / "docs" / "analysis.ipynb"
STUDIES = sorted(p.name for p in (REPO / "docs" / "results").iterdir() if (p / "summary.json").is_file())


def _images(nb) -> list:
    return [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]


def test_the_notebook_is_committed_with_its_figures():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert len(_images(nb)) == 3  # width vs depth, momentum and init scale, learning curves
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "key=len" not in code and "record.VAL_ACC" in code  # columns by their bnexp.record names


def test_analysis_notebook_runs_loads_every_study_and_draws(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "docs")}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert len(_images(nb)) == 3
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    for name in STUDIES:
        assert f"docs/results/{name}" in text, name  # every committed study is loaded

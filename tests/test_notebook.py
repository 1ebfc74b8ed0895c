"""docs/analysis.ipynb runs headless, top to bottom, on the committed reference studies (nbclient, a real
kernel), and draws its figures."""

import nbformat
from helpers.env import REPO
from nbclient import NotebookClient


def test_analysis_notebook_runs_and_draws(tmp_path):
    nb = nbformat.read(REPO / "docs" / "analysis.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "docs")}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # judged value vs lr, width vs depth, learning curves
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    assert "differing setting: ['model.depth']" in text and "pre-auto-d19" in text

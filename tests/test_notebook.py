"""examples/explore.ipynb runs top to bottom in a real Jupyter kernel (nbclient):
summary, a monitored training run, Grad-CAM and the explorer inline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "explore.ipynb"


def test_the_example_notebook_runs_and_shows_the_explorer_inline(tmp_path: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(notebook.cells)}
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cells in outputs.values()
        for o in cells
    )
    assert "Total params" in text or "total" in text.lower()
    assert "test accuracy after one short epoch" in text
    html = [
        o["data"]["text/html"]
        for cells in outputs.values()
        for o in cells
        if "text/html" in o.get("data", {})
    ]
    frames = [h for h in html if "<iframe" in h]
    assert frames, "the explorer handle must show inline as an iframe"
    assert re.search(r'src="http://127\.0\.0\.1:\d+/\?token=[\w-]+"', frames[0])
    assert "stopped: True" in text
    images = [o for cells in outputs.values() for o in cells if "image/png" in o.get("data", {})]
    assert images, "the CAM overlay is shown as a picture"

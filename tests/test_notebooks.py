"""The notebooks users open (notebooks/*.ipynb) run top to bottom in the default suite, on this interpreter, and load
nothing from the network; the committed files carry no outputs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from plotly.offline import get_plotlyjs

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL = "edgemtl-test"
# a script, stylesheet, image or module import fetched from elsewhere than the notebook itself
NETWORK_LOAD = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|import\s*\(?\s*["'](?:https?:)?//""", re.I)


def _ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def _kernel(folder: Path) -> KernelManager:
    """A kernel on this very interpreter (sys.executable), whatever kernelspecs the user's Jupyter paths hold."""
    spec = folder / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "edgemtl tests", "language": "python"}))
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(folder)]))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/*.ipynb: none found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebooks_carry_no_outputs(path: Path):
    """Outputs (embedded plotly.js is megabytes) are cleared before committing: `jupyter nbconvert --clear-output
    --inplace notebooks/*.ipynb`."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [index for index, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_and_loads_nothing_from_the_network(path: Path, tmp_path: Path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # what a notebook writes to a temporary folder goes with tmp_path
    client = NotebookClient(notebook, km=_kernel(tmp_path / "kernels"), timeout=300, allow_errors=False,
                            resources={"metadata": {"path": str(work)}})
    client.execute()  # a failing cell raises CellExecutionError with its traceback
    plotlyjs = get_plotlyjs()  # the embedded library names CDN URLs of its own (map tiles, topojson) it never fetches here
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"cell {index}: {output.get('ename')}: {output.get('evalue')}"
            texts = [output.get("text", "")] + [value if isinstance(value, str) else json.dumps(value)
                                                for value in output.get("data", {}).values()]
            for text in texts:
                text = text.replace(plotlyjs, "")
                assert "https://cdn" not in text and "notebook_connected" not in text, f"cell {index}: {text[:300]}"
                assert not NETWORK_LOAD.search(text), f"cell {index} loads from the network: {text[:300]}"

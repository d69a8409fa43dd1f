"""The npm ``openai`` package (JavaScript) as a client of the local Batch API server.

Runs ``tests/server/node_client.mjs`` with ``node``: upload, create three batches,
cancel one, list them with pagination (page by page and with the auto-paginating
iterator), wait for one and download its output. The package is installed from the
npm registry once into pytest's cache directory (``.pytest_cache``, ignored by git;
a temporary directory when the cache plugin is off). Skipped, with the reason, when
``node``/``npm`` are absent or the package cannot be installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pdbatch.server import Faults

pytestmark = pytest.mark.timeout(90)  # the first run installs the package (npm gives up after 45 s)

SCRIPT = Path(__file__).with_name("node_client.mjs")


@pytest.fixture(scope="session")
def node_openai(request, tmp_path_factory) -> Path:
    """A directory whose ``node_modules`` holds the npm ``openai`` package."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"needs node and npm on PATH (node: {node}, npm: {npm})")
    cache = getattr(request.config, "cache", None)
    home = Path(cache.mkdir("node-openai")) if cache is not None else tmp_path_factory.mktemp("node-openai")
    if not (home / "node_modules" / "openai" / "package.json").exists():
        try:
            run = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-save", "--loglevel=error",
                                  "--fetch-retries=1", "--fetch-timeout=15000", "--prefix", str(home), "openai@>=4"],
                                 capture_output=True, text=True, timeout=45)
        except subprocess.TimeoutExpired:
            pytest.skip("npm install openai took over 45 s (registry unreachable?)")
        if run.returncode != 0:
            pytest.skip(f"npm install openai failed (no registry access?): {run.stderr.strip()[-300:]}")
    return home


def test_the_npm_openai_client_uploads_creates_lists_cancels_and_downloads(make_server, node_openai):
    srv = make_server(faults=Faults(request_delay=0.05, shuffle_output=False))
    script = node_openai / SCRIPT.name  # next to node_modules, so that `import "openai"` resolves
    shutil.copyfile(SCRIPT, script)
    run = subprocess.run([shutil.which("node"), str(script), srv.base_url], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout)
    created = seen["created"]
    assert len(set(created)) == 3 and seen["cancel_answer"] == "cancelling"
    newest_first = created[::-1]
    assert seen["pages"] == [newest_first[:2], newest_first[2:]]
    assert seen["iterated"] == newest_first
    assert seen["done_status"] == "completed" and seen["stopped_status"] == "cancelled"
    assert seen["counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert sorted(o["custom_id"] for o in seen["output"]) == ["run-0", "run-1", "run-2"]
    assert all(o["response"]["status_code"] == 200 for o in seen["output"])
    assert srv.stats.requests_executed < 3 * 2 + 200  # the cancelled batch did not run to its end

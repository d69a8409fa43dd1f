"""The progress bars as a user sees them on stderr (text bars: no notebook here), end to end
through the real openai SDK against the local Batch API server. No mocks."""

from __future__ import annotations

import pandas as pd
import pytest

import pdbatch  # noqa: F401  (registers .llm)
from pdbatch.backends.progress import in_notebook
from pdbatch.server import Faults

ROWS = pd.DataFrame({"w": list("abcdef")})


def drawn(err: str) -> list:
    """The lines the bar drew, in order ('\\r' starts a redraw; a log shows each as a line)."""
    return [part.rstrip() for part in err.replace("\n", "\r").split("\r") if part.strip()]


@pytest.mark.parametrize("backend", ["batch", "realtime"])
def test_the_final_line_is_drawn_once(make_server, make_client, capsys, backend):
    srv = make_server(faults=Faults(request_delay=0.05, validating_delay=0.2))
    polls = dict(poll_interval=0.05, max_poll_interval=0.05) if backend == "batch" else dict(max_concurrency=1)
    out = ROWS.llm.map("say {w}", model="m", client=make_client(srv), backend=backend, cache=False, timeout=30,
                       **polls)
    assert out["llm_error"].isna().all()
    err = capsys.readouterr().err
    lines = drawn(err)
    # The final state is drawn once (a batch may show 6/6 while still finalizing, then 6/6 completed).
    final = [line for line in lines if line == lines[-1]]
    assert len(final) == 1 and "6/6" in final[0], err
    assert err.endswith("\n") and "failed=0" in final[0]
    assert len(lines) >= 2 and "0/6" in lines[0], err  # it was drawn while running, too
    if backend == "batch":  # counts and time, then the batch's state
        assert final[0].endswith(", completed, failed=0]"), final[0]


def test_a_reattached_finished_job_draws_one_line(make_server, make_client, capsys):
    client = make_client(make_server())
    first = ROWS.llm.map("say {w}", model="m", client=client, poll_interval=0.02, timeout=30)
    capsys.readouterr()
    again = ROWS.llm.map("say {w}", model="m", client=client, poll_interval=0.02, timeout=30)
    assert again.attrs["pdbatch"]["job_id"] == first.attrs["pdbatch"]["job_id"]
    lines = drawn(capsys.readouterr().err)
    assert len(lines) == 1 and "6/6" in lines[0] and "completed, failed=0" in lines[0], lines


def test_not_in_a_notebook_here():
    assert in_notebook() is False

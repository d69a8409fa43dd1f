"""The batch backend against a server that fails: polls and downloads survive transient faults,
permanent ones are explained, and a 429 on batches.create is waited out for a bounded time."""

from __future__ import annotations

import time

import pandas as pd
import pytest

import pdbatch
from pdbatch.errors import PdbatchError
from pdbatch.server import Faults

FRAME = pd.DataFrame({"text": ["a", "b", "c"]}, index=["x", "y", "z"])


def fast(client, **kw):
    return pdbatch.Batch(client, poll_interval=0.02, max_poll_interval=0.05, **kw)


def test_polls_and_downloads_survive_5xx_whatever_the_clients_retries(make_server, make_client):
    srv = make_server(faults=Faults(http_errors={"GET /v1/batches/*": [500, 503, 502],
                                                 "GET /v1/files/*/content": [500, 504]}, retry_after=0.01))
    client = make_client(srv, max_retries=0)  # the client itself never retries
    before = FRAME.copy()
    out = FRAME.llm.map("Say {text}", model="gpt-4o-mini", backend=fast(client), progress=False, timeout=60)
    assert out["llm_error"].isna().all() and out["llm_output"].tolist() == ["Say a", "Say b", "Say c"]
    assert srv.stats.batches_created == 1  # a failed poll never makes a second batch
    pd.testing.assert_frame_equal(FRAME, before)


def test_an_output_file_gone_is_a_pdbatch_error_naming_job_batch_and_fix(make_server, make_client):
    srv = make_server()
    client = make_client(srv)
    job = FRAME.llm.map("Say {text}", model="gpt-4o-mini", backend=fast(client), progress=False, wait=False)
    deadline = time.monotonic() + 10
    batch = client.batches.retrieve(job.batch_ids[0])
    while batch.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.02)
        batch = client.batches.retrieve(job.batch_ids[0])
    client.files.delete(batch.output_file_id)  # as if the provider had expired it
    with pytest.raises(PdbatchError) as info:
        job.wait(progress=False, timeout=30).result()
    msg = str(info.value)
    assert "404" in msg and job.id in msg and batch.id in msg and ".cancel()" in msg


def test_a_429_on_create_is_waited_out_past_five_attempts(make_server, make_client):
    srv = make_server(faults=Faults(http_errors={"POST /v1/batches": [429] * 7}, retry_after=0.05))
    out = FRAME.llm.map("Say {text}", model="gpt-4o-mini", backend=fast(make_client(srv)), progress=False,
                        timeout=60)
    assert out["llm_error"].isna().all() and srv.stats.batches_created == 1


def test_a_429_on_create_gives_up_after_create_timeout(make_server, make_client):
    srv = make_server(faults=Faults(http_errors={"POST /v1/batches": [429] * 500}, retry_after=0.05))
    start = time.monotonic()
    with pytest.raises(PdbatchError, match="create_timeout"):
        FRAME.llm.map("Say {text}", model="gpt-4o-mini", backend=fast(make_client(srv), create_timeout=0.5),
                      progress=False, timeout=60)
    assert time.monotonic() - start < 10 and srv.stats.batches_created == 0

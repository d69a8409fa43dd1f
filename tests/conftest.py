"""Shared fixtures: a real local Batch API server and an ``openai`` client for it.

(``pdbatch_home``, the per-test ``$PDBATCH_HOME``, lives in the repository's root
``conftest.py`` so that it covers the doctests in ``pdbatch/`` too.)

* ``make_server(engine=..., faults=..., **kw)`` starts a :class:`BatchServer`
  on 127.0.0.1 (free port) and stops every server it started at teardown.
* ``server``: a started server with :func:`echo_engine` and no faults.
* ``client``: ``openai.OpenAI`` for ``server`` with ``max_retries=0``;
  ``make_client(srv, **kw)`` builds more.
* ``batch_env``: ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` set for a started server (as a CLI user sets them).
* ``wait_batch(client, batch_id, statuses=TERMINAL, timeout=5)``: poll until
  the batch reaches one of ``statuses`` (bounded in polls and in time).
"""

from __future__ import annotations

import time

import openai
import pytest

from pdbatch.server.engines import echo_engine
from pdbatch.server import BatchServer

TEST_KEY = "test-key-do-not-store"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def make_server():
    """Factory starting servers; all are stopped when the test ends."""
    started: list[BatchServer] = []

    def factory(engine=echo_engine, faults=None, **kwargs) -> BatchServer:
        srv = BatchServer(engine=engine, faults=faults, **kwargs).start(timeout=5.0)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.stop(timeout=3.0)


@pytest.fixture
def server(make_server) -> BatchServer:
    return make_server()


@pytest.fixture
def make_client():
    """Factory of SDK clients for a server (no retries unless asked); closed at teardown."""
    made: list[openai.OpenAI] = []

    def factory(srv: BatchServer, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 10.0)
        made.append(openai.OpenAI(base_url=srv.base_url, api_key=TEST_KEY, **kwargs))
        return made[-1]

    yield factory
    for c in made:
        c.close()


@pytest.fixture
def client(server, make_client) -> openai.OpenAI:
    return make_client(server)


@pytest.fixture
def wait_batch():
    """Poll a batch until its status is in ``statuses``; fail after ``timeout`` s."""

    def wait(client, batch_id, statuses=TERMINAL, timeout=5.0, interval=0.01):
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / interval) + 10):
            batch = client.batches.retrieve(batch_id)
            if batch.status in statuses:
                return batch
            if time.monotonic() > deadline:
                break
            time.sleep(interval)
        raise AssertionError(f"batch {batch_id} still {batch.status!r} after {timeout} s; "
                             f"wanted one of {statuses}")

    return wait


@pytest.fixture
def batch_env(make_server, monkeypatch):
    """The environment a user sets for the Batch API, pointed at the local server."""
    srv = make_server()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    return srv

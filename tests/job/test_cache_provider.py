"""The answer cache and job identity include who answers: one server's answers never answer another's run."""

from __future__ import annotations

import pandas as pd
import pytest

import pdbatch
from pdbatch.backends import provider_of
from pdbatch.backends.base import openai_provider
from pdbatch.server.engines import ScriptedEngine

FRAME = pd.DataFrame({"city": ["Paris", "Lima", "Oslo"]}, index=["fr", "pe", "no"])


def two_servers(make_server):
    a = ScriptedEngine(lambda text, body: "A " + text)
    b = ScriptedEngine(lambda text, body: "B " + text)
    return make_server(engine=a), a, make_server(engine=b), b


@pytest.mark.parametrize("backend", ["batch", "realtime"])
def test_a_second_server_is_asked_and_its_own_answers_come_back(make_server, make_client, backend):
    srv_a, eng_a, srv_b, eng_b = two_servers(make_server)
    opts = dict(model="gpt-4o-mini", backend=backend, progress=False, timeout=30)
    if backend == "batch":
        opts.update(poll_interval=0.02, max_poll_interval=0.05)
    first = FRAME.llm.map("Country of {city}?", client=make_client(srv_a), **opts)
    second = FRAME.llm.map("Country of {city}?", client=make_client(srv_b), **opts)
    assert first["llm_output"].str.startswith("A ").all()
    assert second["llm_output"].str.startswith("B ").all(), second["llm_output"].tolist()
    assert eng_b.calls == 3 and second.attrs["pdbatch"]["counts"]["cached"] == 0
    assert second.attrs["pdbatch"]["job_id"] != first.attrs["pdbatch"]["job_id"]
    again = FRAME.llm.map("Country of {city}?", client=make_client(srv_a), **opts)  # back to A: A's answers, no call
    assert again["llm_output"].tolist() == first["llm_output"].tolist() and eng_a.calls == 3


def test_the_same_server_through_another_client_still_hits_the_cache(make_server, make_client):
    srv = make_server()
    opts = dict(model="gpt-4o-mini", backend="realtime", progress=False, timeout=30)
    FRAME.llm.map("Country of {city}?", client=make_client(srv), **opts)
    calls = len(srv.stats.log)
    FRAME.iloc[:2].llm.map("Country of {city}?", client=make_client(srv, timeout=5.0), **opts)
    assert len(srv.stats.log) == calls  # the two rows come from the cache: same base URL, same provider


def test_the_provider_names_base_url_organisation_and_project_never_the_key(make_server, make_client, monkeypatch):
    srv = make_server()
    client = make_client(srv, organization="org-1", project="proj-2")
    who = openai_provider(client)
    assert who == f"openai {srv.base_url.rstrip('/')} org=org-1 project=proj-2"
    assert client.api_key not in who
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert provider_of("batch") == "openai https://api.openai.com/v1"
    assert pdbatch.Batch(client).provider == who == pdbatch.Realtime(client).provider
    assert pdbatch.Local().provider == "local default"

"""``pdbatch serve --upstream``: ``/v1/models`` lists the upstream's own models, and ``--tpm`` reaches the limiter.

A second local :class:`BatchServer` plays the upstream; its engine names the models it
serves. The model list is asked for through the upstream engine's limiter and retry
policy, with the model map's served names first.
"""

from __future__ import annotations

import time

import openai
import pytest

from pdbatch.server import Faults
from pdbatch.server.engines import ScriptedEngine
from pdbatch.server.upstream import UpstreamEngine
from tests.server.test_upstream import Serve

pytestmark = pytest.mark.timeout(60)
HI = [{"role": "user", "content": "hi"}]


class Named(ScriptedEngine):
    """Echoes the prompt; ``GET /v1/models`` of its server lists ``models``."""

    models = ["qwen", "llama"]

    def __init__(self) -> None:
        super().__init__(lambda text, body: text)


def test_models_are_the_upstreams_with_the_model_map_names_first(make_server, make_client):
    upstream = make_server(Named())
    srv = make_server(UpstreamEngine(upstream.base_url, model_map={"gpt-4o-mini": "qwen", "ghost": "absent"}))
    client = make_client(srv)
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini", "qwen", "llama"]  # "ghost": not upstream
    served = client.models.retrieve("gpt-4o-mini")
    assert served.id == "gpt-4o-mini" and served.owned_by == "pdbatch" and served.object == "model"
    assert client.models.retrieve("llama").id == "llama"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("ghost")
    assert err.value.code == "model_not_found" and "'ghost'" in err.value.message
    assert upstream.stats.calls("GET", "/v1/models") == 4  # asked each time, never cached stale


def test_the_model_list_goes_through_the_limiter_and_the_retry_policy(make_server, make_client):
    upstream = make_server(Named(), Faults(http_errors={"GET /v1/models": [503]}))
    srv = make_server(UpstreamEngine(upstream.base_url, rpm=60))  # a call every ~1.03 s
    client = make_client(srv)
    start = time.monotonic()
    client.chat.completions.create(model="qwen", messages=HI)
    assert [m.id for m in client.models.list()] == ["qwen", "llama"]  # the 503 was retried
    assert time.monotonic() - start >= 2.0  # its two tries each waited for a slot after the chat call
    assert upstream.stats.calls("GET", "/v1/models") == 2


@pytest.mark.parametrize("faults, why", [
    (Faults(http_errors={"GET /v1/models": [404]}), "HTTP 404"),
    (Faults(http_errors={"GET /v1/models": [400]}), "HTTP 400"),
])
def test_an_upstream_that_cannot_list_is_a_clear_502(make_server, make_client, faults, why):
    upstream = make_server(Named(), faults)
    srv = make_server(UpstreamEngine(upstream.base_url, max_attempts=1))
    client = make_client(srv)
    with pytest.raises(openai.APIStatusError) as err:
        client.models.list()
    assert err.value.status_code == 502 and err.value.code == "upstream_models_unavailable"
    assert err.value.type == "server_error"
    assert f"the upstream {upstream.base_url} could not list its models ({why}" in err.value.message
    assert "ask for a model by name" in err.value.message
    assert client.chat.completions.create(model="qwen", messages=HI).choices[0].message.content == "hi"


def test_an_unreachable_upstream_is_a_502_naming_it(make_server, make_client):
    upstream = make_server(Named())
    url = upstream.base_url
    upstream.stop()
    srv = make_server(UpstreamEngine(url, max_attempts=1, timeout=5))
    with pytest.raises(openai.APIStatusError) as err:
        make_client(srv).models.list()
    assert err.value.status_code == 502 and f"the upstream {url} could not list its models" in err.value.message



@pytest.mark.timeout(90)
def test_tpm_reaches_the_limiter_of_pdbatch_serve_upstream(make_server, tmp_path):
    engine = Named()
    upstream = make_server(engine)
    serve = Serve(tmp_path / "serve.txt", tmp_path / "data", upstream.base_url, "--tpm", "6000", "--rpm", "600",
                  "--model-map", "gpt-4o-mini=qwen", "-q")
    try:
        assert "600 rpm, 6000 tpm" in serve.banner, serve.banner  # read back from the limiter
        client = serve.client
        assert [m.id for m in client.models.list()] == ["gpt-4o-mini", "qwen", "llama"]
        ask = dict(model="gpt-4o-mini", messages=HI, max_completion_tokens=200)  # ~200 tokens of 97 a second
        start = time.monotonic()
        client.chat.completions.create(**ask)
        client.chat.completions.create(**ask)
        assert time.monotonic() - start >= 2.0  # the second waited for the token budget (600 rpm alone: 0.1 s)
    finally:
        serve.stop()
    assert engine.calls == 2 and engine.bodies[-1]["model"] == "qwen"

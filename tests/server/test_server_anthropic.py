"""The local server's Messages and Message Batches API, driven by the real ``anthropic`` SDK over HTTP."""

from __future__ import annotations

import time

import pytest

from pdbatch.server import Faults
from pdbatch.server.engines import ScriptedEngine

anthropic = pytest.importorskip("anthropic")


def sdk(srv, **kw):
    kw.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=srv.base_url[: -len("/v1")], api_key="test", timeout=10.0, **kw)


def ended(client, bid, timeout=20.0):
    deadline = time.monotonic() + timeout
    for _ in range(4000):
        b = client.messages.batches.retrieve(bid)
        if b.processing_status == "ended":
            return b
        assert time.monotonic() < deadline, f"batch {bid} still {b.processing_status}"
        time.sleep(0.01)
    raise AssertionError("unreachable")


def req(cid, text="hi", **params):
    return {"custom_id": cid, "params": {"model": "claude-haiku-4-5", "max_tokens": 64,
                                         "messages": [{"role": "user", "content": text}], **params}}


def test_messages_create_answers_with_text_blocks(make_server):
    srv = make_server(engine=ScriptedEngine(lambda text, body: text.upper()))
    msg = sdk(srv).messages.create(model="claude-haiku-4-5", max_tokens=50, system="be loud",
                                   messages=[{"role": "user", "content": "hello there"}])
    assert msg.content[0].type == "text" and msg.content[0].text == "HELLO THERE"
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens == 2
    body = srv.engine.bodies[0]
    assert body["messages"][0] == {"role": "system", "content": "be loud"}


def test_messages_create_refuses_missing_max_tokens_and_system_role(make_server):
    srv = make_server()
    client = sdk(srv)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.post("/v1/messages", body={"model": "m", "messages": [{"role": "user", "content": "x"}]},
                    cast_to=object)
    with pytest.raises(anthropic.BadRequestError, match="role"):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "system", "content": "x"}])


def test_schema_and_image_blocks_reach_the_engine(make_server):
    srv = make_server()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    msg = sdk(srv).messages.create(
        model="m", max_tokens=50, output_config={"format": {"type": "json_schema", "schema": schema}},
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "count"},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}])
    import json
    assert isinstance(json.loads(msg.content[0].text)["n"], int)


def test_batch_lifecycle_results_in_any_order(make_server):
    srv = make_server(engine=ScriptedEngine(lambda text, body: f"re:{text}"),
                      faults=Faults(request_delay=0.01))
    client = sdk(srv)
    reqs = [req(f"r{i}", f"t{i}") for i in range(6)]
    b = client.messages.batches.create(requests=reqs)
    assert b.id.startswith("msgbatch_") and b.processing_status == "in_progress"
    assert b.request_counts.processing == 6 and b.results_url is None
    b = ended(client, b.id)
    assert b.request_counts.succeeded == 6 and b.request_counts.processing == 0 and b.results_url
    results = list(client.messages.batches.results(b.id))
    assert [r.custom_id for r in results] != [r["custom_id"] for r in reqs]  # shuffled
    got = {r.custom_id: r.result.message.content[0].text for r in results}
    assert got == {f"r{i}": f"re:t{i}" for i in range(6)}
    page = client.messages.batches.list(limit=10)
    assert [x.id for x in page.data] == [b.id]
    assert client.messages.batches.delete(b.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(b.id)


@pytest.mark.parametrize("bad", ["a b", "x/y|z", "é", "a" * 65, ""])
def test_invalid_custom_id_rejects_the_whole_batch(make_server, bad):
    srv = make_server()
    client = sdk(srv)
    with pytest.raises(anthropic.BadRequestError, match=r"requests\.1\.custom_id"):
        client.messages.batches.create(requests=[req("ok"), req(bad)])
    assert srv.stats.batches_created == 0


def test_batch_requires_max_tokens(make_server):
    srv = make_server()
    bad = req("a")
    del bad["params"]["max_tokens"]
    with pytest.raises(anthropic.BadRequestError, match=r"requests\.0\.params\.max_tokens"):
        sdk(srv).messages.batches.create(requests=[bad])


def test_errored_and_expired_results(make_server):
    def error_for(cid, params):
        return {"r0": (529, "overloaded", "Overloaded"), "r1": (400, "bad", "prompt is too long")}.get(cid)

    srv = make_server(faults=Faults(error_for=error_for, expire_after=3, shuffle_output=False))
    client = sdk(srv)
    b = ended(client, client.messages.batches.create(requests=[req(f"r{i}") for i in range(5)]).id)
    rc = b.request_counts
    assert (rc.succeeded, rc.errored, rc.expired, rc.canceled, rc.processing) == (1, 2, 2, 0, 0)
    by = {r.custom_id: r.result for r in client.messages.batches.results(b.id)}
    assert by["r0"].type == "errored" and by["r0"].error.error.type == "overloaded_error"
    assert by["r1"].error.error.type == "invalid_request_error"
    assert by["r1"].error.error.message == "prompt is too long"
    assert by["r3"].type == by["r4"].type == "expired"


def test_cancel_and_list_pages(make_server):
    srv = make_server(faults=Faults(request_delay=0.05))
    client = sdk(srv)
    first = ended(client, client.messages.batches.create(requests=[req("a")]).id)
    b = client.messages.batches.create(requests=[req(f"r{i}") for i in range(50)])
    with pytest.raises(anthropic.BadRequestError, match="cannot be deleted"):
        client.messages.batches.delete(b.id)  # 50 x 0.05 s: still processing
    c = client.messages.batches.cancel(b.id)
    assert c.processing_status == "canceling" and c.cancel_initiated_at is not None
    b = ended(client, b.id)
    assert b.request_counts.canceled > 0
    assert b.request_counts.succeeded + b.request_counts.canceled == 50
    ids = [x.id for x in client.messages.batches.list(limit=1)]  # the SDK pages through after_id
    assert ids == [b.id, first.id]


def test_x_api_key_header_is_accepted_like_a_bearer_token(make_server):
    import json
    import urllib.error
    import urllib.request

    srv = make_server()
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode()

    def post(headers):
        req = urllib.request.Request(srv.base_url + "/messages", data=body, method="POST",
                                     headers={"content-type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, None

    status, msg = post({"x-api-key": "k"})
    assert status == 200 and msg["content"][0]["text"] == "hi"
    assert post({})[0] == 401

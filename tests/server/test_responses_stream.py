"""``stream: true`` on ``/v1/responses``: the Responses API's semantic events, read by the real ``openai`` SDK.

The server answers the whole request first, then streams it as ``response.created``,
``response.in_progress``, the output item and content part events, the text a word at a
time (``response.output_text.delta``), ``response.output_text.done`` and a last
``response.completed`` (``response.incomplete`` when cut short) with the usage.
"""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from pdbatch.server.engines import ScriptedEngine
from pdbatch.server.upstream import UpstreamEngine

pytestmark = pytest.mark.timeout(30)

OPENING = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def test_streamed_response_events_match_the_plain_answer(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: f"you said: {text}  twice")
    client = make_client(make_server(engine=engine))
    plain = client.responses.create(model="m", input="hello there", instructions="be brief")
    with client.responses.create(model="m", input="hello there", instructions="be brief", stream=True) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds[:4] == OPENING and kinds[-4:] == [*CLOSING, "response.completed"]
    assert kinds[4:-4] == ["response.output_text.delta"] * len(deltas) and len(deltas) == 5
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in deltas) == plain.output_text == "you said: hello there  twice"
    created, done = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    assert done.status == "completed" and done.output_text == plain.output_text and done.id == created.id
    assert done.usage.model_dump() == plain.usage.model_dump() and done.usage.total_tokens > 0
    item = events[2].item
    assert item.type == "message" and item.role == "assistant" and item.status == "in_progress" and item.content == []
    assert {e.item_id for e in deltas} == {item.id} == {events[-2].item.id}
    assert events[-4].text == plain.output_text and events[-3].part.text == plain.output_text
    assert all("stream" not in b for b in engine.bodies)  # the engine answered a plain request


def test_the_sdk_stream_helper_accumulates_the_final_response(make_server, make_client):
    client = make_client(make_server(engine=ScriptedEngine(lambda text, body: "one two three")))
    with client.responses.stream(model="m", input="hi") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert texts == ["one ", "two ", "three"] and final.output_text == "one two three"


def test_a_response_cut_short_ends_incomplete_and_a_refusal_streams_as_refusal(make_server, make_client):
    replies = iter([{"content": "one two", "finish_reason": "length"}, {"refusal": "I cannot help."}])
    client = make_client(make_server(engine=ScriptedEngine(lambda text, body: next(replies))))
    cut = list(client.responses.create(model="m", input="hi", max_output_tokens=2, stream=True))
    assert cut[-1].type == "response.incomplete" and cut[-1].response.status == "incomplete"
    assert cut[-1].response.incomplete_details.reason == "max_output_tokens"
    refused = list(client.responses.create(model="m", input="hi", stream=True))
    kinds = [e.type for e in refused]
    assert "response.output_text.delta" not in kinds and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in refused if e.type == "response.refusal.delta") == "I cannot help."
    assert [e.refusal for e in refused if e.type == "response.refusal.done"] == ["I cannot help."]


def test_raw_framing_is_named_events_without_done(server):
    req = urllib.request.Request(f"{server.base_url}/responses", data=json.dumps(
        {"model": "m", "input": "hi there", "stream": True}).encode(), method="POST",
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream") and r.headers["x-request-id"]
        blocks = r.read().decode().split("\n\n")
    assert blocks[-1] == "" and "[DONE]" not in "".join(blocks)
    for block in blocks[:-1]:
        event, data = block.split("\n")
        assert event.startswith("event: response.") and data.startswith("data: {")
        assert json.loads(data[6:])["type"] == event[7:]


def test_a_bad_streamed_response_request_is_a_400_before_any_event(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: text)
    client = make_client(make_server(engine=engine))
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="m", input=[{"role": "robot", "content": "hi"}], stream=True)
    assert err.value.param == "input[0].role" and "'input[0].role'" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="m", input="hi", stream="yes")
    assert err.value.param == "stream" and err.value.code == "invalid_type"
    assert engine.calls == 0


def test_streamed_responses_in_front_of_an_upstream(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: f"up: {text}")
    upstream = make_server(engine=engine)
    srv = make_server(UpstreamEngine(upstream.base_url, model_map={"gpt-4o-mini": "qwen"}))
    events = list(make_client(srv).responses.create(model="gpt-4o-mini", input="hi you", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "up: hi you"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "up: hi you"
    assert upstream.stats.calls("POST", "/v1/responses") == 1 and engine.bodies[-1]["model"] == "qwen"
    assert "stream" not in engine.bodies[-1]

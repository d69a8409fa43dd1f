"""The local server refuses image parts the hosted API refuses: a 400 per batch line, a 400 realtime.

Exercised only through the real ``openai`` SDK over HTTP (tests/conftest.py).
"""

from __future__ import annotations

import io
import json

import openai
import pytest

from pdbatch.core.images import IMAGE_MAX_BYTES
from pdbatch.server.engines import ScriptedEngine

pytestmark = pytest.mark.timeout(30)

CHAT = "/v1/chat/completions"


def big_data_url(n_bytes: int) -> str:
    """A base64 PNG data URL decoding to exactly ``n_bytes`` bytes."""
    full, rest = divmod(n_bytes, 3)
    return "data:image/png;base64," + "AAAA" * full + {0: "", 1: "AA==", 2: "AAA="}[rest]


GOOD = {
    "https": "https://example.com/a.png",
    "upper": "HTTPS://example.com/b.png",
    "png": "data:image/png;base64,iVBORw0KGgo=",
    "at_limit": big_data_url(IMAGE_MAX_BYTES),
}
BAD = {
    "text": ("data:text/plain;base64,aGVsbG8=", "data URL is not an image (media type 'text/plain')"),
    "ftp": ("ftp://example.com/a.png", "unsupported image URL scheme 'ftp'"),
    "path": ("/tmp/a.png", "unsupported image URL scheme ''"),
    "big": (big_data_url(IMAGE_MAX_BYTES + 1), "image is too large"),
}


def vision_body(url: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": url}}]}]}


def test_batch_lines_with_refused_images_get_400_error_lines(make_server, make_client, wait_batch):
    engine = ScriptedEngine(lambda text, body: "seen")
    srv = make_server(engine=engine)
    client = make_client(srv)
    urls = {**GOOD, **{k: v[0] for k, v in BAD.items()}}
    rows = [{"custom_id": k, "method": "POST", "url": CHAT, "body": vision_body(u)} for k, u in urls.items()]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    b = wait_batch(client, client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h").id,
                   timeout=20)
    assert b.status == "completed"
    assert b.request_counts.model_dump() == {"total": 8, "completed": 4, "failed": 4}
    out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
    err = {e["custom_id"]: e for e in map(json.loads, client.files.content(b.error_file_id).text.splitlines())}
    assert sorted(x["custom_id"] for x in out) == sorted(GOOD)
    assert set(err) == set(BAD)
    for cid, (_, words) in BAD.items():
        response = err[cid]["response"]
        assert response["status_code"] == 400 and err[cid]["error"] is None
        error = response["body"]["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_image_url"
        assert error["param"] == "messages[0].content[1].image_url.url"
        assert words in error["message"]
    # the engine saw the accepted requests only
    assert engine.calls == 4 and srv.stats.requests_executed == 4
    assert sorted(b["messages"][0]["content"][1]["image_url"]["url"][:30] for b in engine.bodies) == \
        sorted(u[:30] for u in GOOD.values())


@pytest.mark.parametrize("name", sorted(BAD))
def test_realtime_refuses_images_with_400(make_server, make_client, name):
    engine = ScriptedEngine(lambda text, body: "seen")
    srv = make_server(engine=engine)
    client = make_client(srv)
    url, words = BAD[name]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**vision_body(url))
    assert info.value.status_code == 400
    assert info.value.body["code"] == "invalid_image_url" and words in info.value.body["message"]
    assert engine.calls == 0
    assert client.chat.completions.create(**vision_body(GOOD["upper"])).choices[0].message.content == "seen"


def test_non_string_image_url_is_refused(server, client):
    body = vision_body("x")
    body["messages"][0]["content"][1]["image_url"] = {"url": 5}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**body)
    assert info.value.body["code"] == "invalid_value"
    assert info.value.body["param"] == "messages[0].content[1].image_url.url"

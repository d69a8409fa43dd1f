"""Responses output files read by Arrow give the very answers the line-by-line reader gives."""

from __future__ import annotations

import orjson

from pdbatch.core.answers import Answers
from pdbatch.core.batchfile import read_answers, read_results
from pdbatch.server.engines import chat_response
from pdbatch.server.responses import from_chat


def _line(i: int) -> dict:
    chat = chat_response(f"answer {i}", model="m", prompt_tokens=5) if i % 5 else \
        chat_response(None, model="m", refusal=f"no {i}")
    if i % 7 == 0:
        chat["choices"][0]["finish_reason"] = "length"
    if i % 9 == 0:
        chat["usage"]["completion_tokens_details"]["reasoning_tokens"] = 3
    body = from_chat(chat, {})
    if i % 11 == 0:  # a reasoning item first, and a message of two text parts
        body["output"].insert(0, {"type": "reasoning", "summary": []})
        body["output"][1]["content"].append({"type": "output_text", "text": "!"})
    if i % 13 == 0:
        return {"custom_id": str(i), "response": {"status_code": 400, "body": {"error": {"code": "bad", "message": "no"}}},
                "error": None}
    if i % 17 == 0:
        return {"custom_id": str(i), "response": None, "error": {"code": "batch_expired", "message": "expired"}}
    return {"custom_id": str(i), "response": {"status_code": 200, "body": body}, "error": None}


def test_arrow_and_line_readers_agree_on_responses_files(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"".join(orjson.dumps(_line(i)) + b"\n" for i in range(300)))
    fast = read_answers(path, "responses")
    slow = Answers.from_results(read_results(path))
    assert fast.is_arrow("content")  # read by Arrow, not line by line
    assert fast == slow
    assert read_answers(path, "chat") == slow  # a chat reader handed Responses answers reads them line by line
    assert sum(fast.ok) == len([i for i in range(300) if i % 5 and i % 7 and i % 13 and i % 17])
    assert fast.content[11] == "answer 11!" and fast.refusal[5] == "no 5"
    assert fast.finish_reason[14] == "max_output_tokens" and fast.reasoning_tokens[9] == 3

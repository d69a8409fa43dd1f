"""Pure translation between chat bodies/answers and Anthropic's Messages shapes, and the custom_id map."""

from __future__ import annotations

import pytest

from pdbatch.core.anthropic import (DEFAULT_MAX_TOKENS, JSON_INSTRUCTION, from_params, result_line, to_chat,
                                    to_message, to_params)
from pdbatch.core.anthropic_ids import VALID, IdMap, anthropic_id
from pdbatch.errors import InputError, OptionError


def chat(**extra):
    return {"model": "claude-haiku-4-5", "messages": [{"role": "system", "content": "sys"},
                                                     {"role": "user", "content": "hi"}], **extra}


def test_params_system_on_top_max_tokens_default_and_limits():
    p = to_params(chat())
    assert p["system"] == "sys" and p["messages"] == [{"role": "user", "content": "hi"}]
    assert p["max_tokens"] == DEFAULT_MAX_TOKENS
    assert to_params(chat(max_completion_tokens=7))["max_tokens"] == 7
    assert to_params(chat(max_tokens=9, temperature=0.2, stop="END"))["stop_sequences"] == ["END"]


def test_schema_goes_as_structured_outputs_and_json_mode_as_an_instruction():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    p = to_params(chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema,
                                                                               "strict": True}}))
    assert p["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    p = to_params(chat(response_format={"type": "json_object"}))
    assert "output_config" not in p and p["system"].endswith(JSON_INSTRUCTION)


def test_images_become_image_blocks():
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x/a.jpg", "detail": "low"}}]}]}
    blocks = to_params(body)["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://x/a.jpg"}}
    assert from_params(to_params(body))["messages"][0]["content"][1]["image_url"]["url"] == \
        "data:image/png;base64,AAAA"


@pytest.mark.parametrize("extra", [{"seed": 1}, {"logprobs": True}, {"frequency_penalty": 0.1},
                                   {"temperature": 1.5}])
def test_params_without_counterpart_are_refused(extra):
    with pytest.raises(OptionError, match=next(iter(extra))):
        to_params(chat(**extra))


def test_embeddings_refused():
    with pytest.raises(OptionError, match="embeddings"):
        to_params({"model": "claude-haiku-4-5", "input": "x"})


@pytest.mark.parametrize("stop,finish", [("end_turn", "stop"), ("max_tokens", "length"),
                                         ("stop_sequence", "stop"), ("refusal", "content_filter")])
def test_answers_map_stop_reasons_and_usage(stop, finish):
    c = to_chat({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "stop_reason": stop,
                 "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 3}})
    choice = c["choices"][0]
    assert choice["finish_reason"] == finish
    assert (choice["message"]["refusal"] == "ab") if stop == "refusal" else choice["message"]["content"] == "ab"
    assert c["usage"]["prompt_tokens"] == 8 and c["usage"]["prompt_tokens_details"]["cached_tokens"] == 3


def test_result_lines():
    ok, good = result_line("x", {"type": "succeeded", "message": to_message(
        {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}, "m")})
    assert good and ok["response"]["body"]["choices"][0]["message"]["content"] == "hi"
    bad, good = result_line("x", {"type": "errored", "error": {"type": "error", "error": {
        "type": "invalid_request_error", "message": "too long"}}})
    assert not good and bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["message"] == "too long"
    assert result_line("x", {"type": "expired"})[0]["error"]["code"] == "batch_expired"
    assert result_line("x", {"type": "canceled"}) == (None, False)


@pytest.mark.parametrize("label", ["a b", "x/y|z", "ünïcødé", "l" * 200, "", "h-abc", "tab\there", "0"])
def test_ids_are_valid_stable_and_round_trip(label):
    aid = anthropic_id(label)
    assert VALID.fullmatch(aid) and aid == anthropic_id(label)
    assert IdMap([label, "other"]).back[aid] == label


def test_valid_ids_kept_and_hashed_prefix_reserved():
    assert anthropic_id("row_1") == "row_1" and anthropic_id("a-b") == "a-b"
    assert anthropic_id("h-1") != "h-1"  # a kept id never looks like a hashed one


def test_collision_is_refused():
    with pytest.raises(InputError, match="same Anthropic custom_id"):
        IdMap(["a b", "a/b"], id_of=lambda cid: "h-same")

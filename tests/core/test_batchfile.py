"""Tests for pdbatch/batchfile.py: write shards, read output/error files (Arrow path and line-by-line path)."""

from __future__ import annotations

import logging
import os

import orjson
import pytest

from pdbatch.core.arrow_answers import arrow_answers
from pdbatch.core.batchfile import (CORRUPT_LINE, MAX_BYTES, MAX_REQUESTS, Shard, read_answers, read_results,
                                    write_shards)
from pdbatch.errors import InputError
from pdbatch.core.answers import answer_reason
from pdbatch.core.answers import Answers
from pdbatch.core.records import Request, Usage

# ------------------------------------------------------------------ helpers

USAGE = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
         "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1}}


def ok(cid, content="hi", finish="stop", refusal=None, usage=USAGE):
    return {"id": f"batch_req_{cid}", "custom_id": cid,
            "response": {"status_code": 200, "request_id": f"req_{cid}",
                         "body": {"id": "chatcmpl", "object": "chat.completion", "model": "m",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                                       "refusal": refusal},
                                               "finish_reason": finish, "logprobs": None}],
                                  "usage": usage, "system_fingerprint": "fp"}},
            "error": None}


def api_error(cid, code="context_length_exceeded", status=400, type_="invalid_request_error"):
    return {"id": f"batch_req_{cid}", "custom_id": cid,
            "response": {"status_code": status, "request_id": f"req_{cid}",
                         "body": {"error": {"message": "too long", "type": type_, "param": None, "code": code}}},
            "error": None}


def expired(cid, code="batch_expired"):
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": None,
            "error": {"code": code, "message": "not executed before the window expired"}}


def write_lines(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else orjson.dumps(line))
            fh.write(b"\n")
    return str(path)


def fallback(path):
    """What the line-by-line path makes of ``path``."""
    return Answers.from_results(read_results(path))


def requests(n, pad=0):
    return [Request(str(i), {"model": "m", "messages": [{"role": "user", "content": "x" * pad + str(i)}]})
            for i in range(n)]


def read_shard(path):
    with open(path, "rb") as fh:
        return [Request.from_dict(orjson.loads(line)) for line in fh]


# ------------------------------------------------------------- write_shards


def test_limits_are_the_batch_api_limits():
    assert MAX_REQUESTS == 50_000
    assert MAX_BYTES == 200 * 1024 * 1024


def test_write_shards_by_count(tmp_path):
    reqs = requests(5)
    shards = write_shards(iter(reqs), str(tmp_path / "new" / "dir"), prefix="job", max_requests=2)
    assert [s.count for s in shards] == [2, 2, 1]
    assert [s.index for s in shards] == [0, 1, 2]
    assert [os.path.basename(s.path) for s in shards] == ["job-0000.jsonl", "job-0001.jsonl", "job-0002.jsonl"]
    back = [r for s in shards for r in read_shard(s.path)]
    assert back == reqs
    for s in shards:
        assert s.bytes == os.path.getsize(s.path)
        assert s.bytes == sum(len(r.to_line()) for r in read_shard(s.path))


def test_write_shards_by_bytes(tmp_path):
    reqs = requests(10, pad=50)
    size = len(reqs[0].to_line())
    assert all(len(r.to_line()) == size for r in reqs)
    shards = write_shards(reqs, str(tmp_path), max_bytes=3 * size + size // 2)
    assert [s.count for s in shards] == [3, 3, 3, 1]
    assert all(os.path.getsize(s.path) <= 3 * size + size // 2 for s in shards)
    assert [r for s in shards for r in read_shard(s.path)] == reqs


def test_write_shards_exact_byte_fit(tmp_path):
    reqs = requests(4, pad=20)
    size = len(reqs[0].to_line())
    shards = write_shards(reqs, str(tmp_path), max_bytes=2 * size)
    assert [s.count for s in shards] == [2, 2]
    assert [s.bytes for s in shards] == [2 * size, 2 * size]


def test_write_shards_count_and_bytes_together(tmp_path):
    reqs = requests(7, pad=20)
    size = len(reqs[0].to_line())
    shards = write_shards(reqs, str(tmp_path), max_requests=3, max_bytes=2 * size)
    assert [s.count for s in shards] == [2, 2, 2, 1]


def test_too_large_request_is_reported_not_written(tmp_path):
    small = requests(3)
    big = Request("big", {"model": "m", "messages": [{"role": "user", "content": "y" * 500}]})
    reqs = [small[0], big, small[1], small[2]]
    too_large = {}
    limit = len(big.to_line()) - 1
    shards = write_shards(reqs, str(tmp_path), max_bytes=limit, too_large=too_large)
    assert list(too_large) == ["big"]
    assert too_large["big"] == f"request too large for one batch file ({len(big.to_line())} bytes > {limit})"
    written = [r for s in shards for r in read_shard(s.path)]
    assert written == small


def test_write_shards_nothing_to_write(tmp_path):
    assert write_shards([], str(tmp_path / "d")) == []
    assert os.listdir(tmp_path / "d") == []


@pytest.mark.parametrize("kw", [{"max_requests": 0}, {"max_bytes": 0}, {"max_requests": -1}])
def test_write_shards_rejects_non_positive_limits(tmp_path, kw):
    with pytest.raises(InputError, match="must be positive"):
        write_shards(requests(1), str(tmp_path), **kw)


def test_write_shards_streams_a_generator_once(tmp_path):
    consumed = []

    def gen():
        for r in requests(3):
            consumed.append(r.custom_id)
            yield r

    shards = write_shards(gen(), str(tmp_path), max_requests=10)
    assert consumed == ["0", "1", "2"]
    assert [s.count for s in shards] == [3]


def test_shard_to_dict():
    assert Shard(1, "/p", 2, 30).to_dict() == {"index": 1, "path": "/p", "count": 2, "bytes": 30}


# ------------------------------------------------------------- read_results


def test_read_results_streams_lines_in_file_order(tmp_path):
    out = write_lines(tmp_path / "out.jsonl", [ok("b"), ok("a")])
    err = write_lines(tmp_path / "err.jsonl", [api_error("c"), expired("d")])
    results = list(read_results([err, out]))
    assert [r.custom_id for r in results] == ["c", "d", "b", "a"]
    assert [r.ok for r in results] == [False, False, True, True]
    assert results[0].error["code"] == "context_length_exceeded"
    assert list(read_results(out)) == results[2:]  # a single path works too


def test_read_results_accepts_pathlike(tmp_path):
    path = tmp_path / "out.jsonl"
    write_lines(path, [ok("1")])
    assert [r.custom_id for r in read_results(path)] == ["1"]


def test_read_results_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "out.jsonl", [b"", orjson.dumps(ok("1")), b"   ", b"\t", orjson.dumps(ok("2")), b""])
    assert [r.custom_id for r in read_results(path)] == ["1", "2"]


def test_read_results_corrupt_line_names_file_and_line(tmp_path, caplog):
    path = write_lines(tmp_path / "out.jsonl", [ok("1"), b"", b'{"custom_id": "2", "resp', ok("3")])
    results = list(read_results(path))
    assert [r.custom_id for r in results] == ["1", "2", "3"]
    bad = results[1]
    assert bad.error["code"] == CORRUPT_LINE and bad.body is None
    assert path in bad.error["message"] and "line 3" in bad.error["message"]
    assert "is not valid JSON" in bad.error["message"]
    assert results[0].ok and results[2].ok


def test_read_results_line_without_custom_id(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pdbatch")
    path = write_lines(tmp_path / "out.jsonl", [ok("1"), {"response": None, "error": {"code": "x", "message": "y"}}])
    assert [r.custom_id for r in read_results(path)] == ["1"]
    (rec,) = [r for r in caplog.records if r.name == "pdbatch"]
    assert rec.levelno == logging.WARNING and path in rec.getMessage() and "line 2" in rec.getMessage()


def test_read_results_missing_file(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="results file not found") as info:
        list(read_results(missing))
    assert repr(missing) in str(info.value)


# -------------------------------------------------------------- read_answers

DOCUMENTED = {
    "success": [ok("1")],
    "api_error": [api_error("1")],
    "api_error_null_code": [api_error("1", code=None, status=429, type_="requests")],
    "server_error": [api_error("1", code="server_error", status=500, type_="server_error")],
    "expired": [expired("1")],
    "truncated": [ok("1", "partial", "length")],
    "refusal": [ok("1", None, "stop", refusal="I can't help with that")],
    "content_filter": [ok("1", None, "content_filter")],
    "no_usage": [ok("1", usage=None)],
    "mixed": [ok("3"), api_error("1"), expired("2"), ok("4", "x", "length"), ok("5", refusal="no")],
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_arrow_path_reads_documented_shapes(tmp_path, name):
    # The fast path must accept these (else the identity test below compares fallback with itself).
    path = write_lines(tmp_path / "out.jsonl", DOCUMENTED[name])
    fast = arrow_answers(path)
    assert fast is not None and len(fast) == len(DOCUMENTED[name])


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_arrow_and_fallback_give_identical_answers(tmp_path, name):
    path = write_lines(tmp_path / "out.jsonl", DOCUMENTED[name])
    assert read_answers(path) == fallback(path)


def test_read_answers_values(tmp_path):
    path = write_lines(tmp_path / "out.jsonl", DOCUMENTED["mixed"])
    a = read_answers(path)
    assert a.custom_id == ["3", "1", "2", "4", "5"]
    assert a.status_code == [200, 400, None, 200, 200]
    assert a.content == ["hi", None, None, "x", "hi"]
    assert a.finish_reason == ["stop", None, None, "length", "stop"]
    assert a.refusal == [None, None, None, None, "no"]
    assert a.has_choice == [True, False, False, True, True]
    assert a.error_code == [None, "context_length_exceeded", "batch_expired", None, None]
    assert a.error_message == [None, "too long", "not executed before the window expired", None, None]
    assert a.usage == Usage(30, 9, 6, 3)


def _equivalent(tmp_path, odd_lines, plain_lines):
    odd = write_lines(tmp_path / "odd.jsonl", odd_lines)
    plain = write_lines(tmp_path / "plain.jsonl", plain_lines)
    assert arrow_answers(odd) is None  # the odd file really takes the fallback path
    return read_answers(odd), read_answers(plain)


def test_integer_error_code_takes_fallback_with_same_answers(tmp_path):
    odd, plain = _equivalent(
        tmp_path,
        [ok("1"), expired("2", code=429), api_error("3", code=1234)],
        [ok("1"), expired("2", code="429"), api_error("3", code="1234")],
    )
    assert odd == plain
    assert odd.error_code == [None, "429", "1234"]


def test_numeric_custom_id_takes_fallback_with_same_answers(tmp_path):
    odd, plain = _equivalent(
        tmp_path,
        [ok(1), api_error(2), expired(30)],
        [ok("1"), api_error("2"), expired("30")],
    )
    assert odd == plain
    assert odd.custom_id == ["1", "2", "30"]


def test_non_string_content_takes_fallback(tmp_path):
    odd, plain = _equivalent(tmp_path, [ok("1", 42)], [ok("1", "42")])
    assert odd == plain


def test_read_answers_blank_lines_and_no_trailing_newline(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"\n" + orjson.dumps(ok("1")) + b"\n\n  \n" + orjson.dumps(ok("2")))
    a = read_answers(str(path))
    assert a.custom_id == ["1", "2"]
    assert a == fallback(str(path))


def test_read_answers_crlf_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps(ok("1")) + b"\r\n" + orjson.dumps(expired("2")) + b"\r\n")
    a = read_answers(str(path))
    assert a.custom_id == ["1", "2"] and a.error_code == [None, "batch_expired"]


def test_read_answers_empty_and_blank_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n\n")
    assert len(read_answers([str(empty), str(blank)])) == 0


def test_read_answers_concatenates_files_and_sums_usage(tmp_path):
    out = write_lines(tmp_path / "out.jsonl", [ok("2"), ok("1")])
    odd = write_lines(tmp_path / "odd.jsonl", [expired(3, code=7)])  # fallback file beside an Arrow file
    err = write_lines(tmp_path / "err.jsonl", [api_error("4")])
    a = read_answers([out, odd, err])
    assert a.custom_id == ["2", "1", "3", "4"]
    assert a.error_code == [None, None, "7", "context_length_exceeded"]
    assert a.usage == Usage(20, 6, 4, 2)
    assert all(len(getattr(a, k)) == 4 for k in ("status_code", "content", "finish_reason", "refusal",
                                                 "has_choice", "error_message", "ok"))


def test_read_answers_line_without_id_is_logged_and_skipped(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pdbatch")
    path = write_lines(tmp_path / "out.jsonl", [ok("1"), ok("2"), b"not json at all", ok("4")])
    a = read_answers(path)
    assert a.custom_id == ["1", "2", "4"] and a.ok == [True] * 3 and a.content == ["hi"] * 3
    (rec,) = [r for r in caplog.records if r.name == "pdbatch"]
    assert rec.levelno == logging.WARNING
    assert path in rec.getMessage() and "1 unreadable line(s) without a custom_id" in rec.getMessage()
    assert "line 3" in rec.getMessage()


def test_read_answers_line_without_custom_id(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pdbatch")
    path = write_lines(tmp_path / "out.jsonl", [ok("1"), {"response": None, "error": {"code": "x", "message": "m"}}])
    a = read_answers(path)
    assert a.custom_id == ["1"] and a.ok == [True]
    assert any("without a custom_id" in r.getMessage() for r in caplog.records if r.name == "pdbatch")


def reason(a, i):
    return answer_reason(a.status_code[i], a.content[i], a.finish_reason[i], a.refusal[i], a.has_choice[i],
                         a.error_code[i], a.error_message[i])


def test_read_answers_truncated_last_line_fails_its_row_only(tmp_path, caplog):
    # A download cut short: the last line stops mid-answer, its custom_id is still readable.
    caplog.set_level(logging.WARNING, logger="pdbatch")
    cut = orjson.dumps(ok("9", "a long answer"))[:70]
    path = write_lines(tmp_path / "out.jsonl", [ok("1", "one"), api_error("2"), ok("3", "three")])
    with open(path, "ab") as fh:
        fh.write(cut)  # no newline: the file ends inside the line
    a = read_answers(path)
    assert a.custom_id == ["1", "2", "3", "9"]
    assert a.content[:3] == ["one", None, "three"] and a.ok == [True, False, True, False]
    assert a.error_code[3] == CORRUPT_LINE == "corrupt_line" and a.content[3] is None
    assert reason(a, 3).startswith(f"corrupt_line: line 4 of {path} is not valid JSON")
    assert a.usage.prompt_tokens == 2 * USAGE["prompt_tokens"]  # the valid lines' usage is kept
    (rec,) = [r for r in caplog.records if r.name == "pdbatch"]
    assert rec.levelno == logging.WARNING and "1 unreadable line(s) recorded as failed answers" in rec.getMessage()
    assert read_answers(path) == a  # reading it again gives the same, and does not raise


def test_read_answers_corrupt_lines_in_the_middle(tmp_path):
    lines = [ok("a"), b'{"id": "batch_req_x", "custom_id": "b\\"q", "response": {"status_code": 200, "bo\x00',
             ok("c"), b'{"custom_id": 17, "response": ]', b'{"custom_id": "d", "response": [1, 2], "error": null}',
             b'["not", "a", "line"]', ok("e")]
    path = write_lines(tmp_path / "out.jsonl", lines)
    a = read_answers(path)
    assert a.custom_id == ["a", 'b"q', "c", "17", "d", "e"]
    assert a.ok == [True, False, True, False, False, True]
    assert a.error_code == [None, CORRUPT_LINE, None, CORRUPT_LINE, CORRUPT_LINE, None]
    assert "line 5" in a.error_message[4] and "shape" in a.error_message[4]
    assert a.content[0] == a.content[2] == a.content[5] == "hi"


def test_read_answers_never_guesses_a_cut_custom_id(tmp_path, caplog):
    # The line stops inside the custom_id itself (or inside a numeric one): no id is made up from the stub.
    caplog.set_level(logging.WARNING, logger="pdbatch")
    path = write_lines(tmp_path / "out.jsonl", [ok("1"), b'{"id": "batch_req_1", "custom_id": "row-12',
                                                b'{"custom_id": 12'])
    a = read_answers(path)
    assert a.custom_id == ["1"]
    assert any("2 unreadable line(s) without a custom_id" in r.getMessage() for r in caplog.records)


def test_read_answers_clean_file_stays_on_the_arrow_path(tmp_path):
    clean = write_lines(tmp_path / "out.jsonl", [ok(str(i)) for i in range(20)])
    dirty = write_lines(tmp_path / "dirty.jsonl", [ok(str(i)) for i in range(20)] + [b"{"])
    assert read_answers(clean).is_arrow("content")
    a = read_answers(dirty)
    assert len(a) == 20 and a == read_answers(clean)


def test_read_answers_corrupt_embedding_line(tmp_path):
    vec = {"custom_id": "1", "response": {"status_code": 200, "body": {"object": "list", "data": [
        {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}], "usage": {"prompt_tokens": 2}}},
        "error": None}
    path = write_lines(tmp_path / "out.jsonl", [vec, orjson.dumps(dict(vec, custom_id="2"))[:60]])
    a = read_answers(path, "embedding")
    assert a.custom_id == ["1", "2"] and a.ok == [True, False] and a.error_code == [None, CORRUPT_LINE]
    assert a.content[0].tolist() == [0.5, 0.25]


def test_read_answers_missing_file(tmp_path):
    good = write_lines(tmp_path / "out.jsonl", [ok("1")])
    with pytest.raises(InputError, match="results file not found"):
        read_answers([good, str(tmp_path / "missing.jsonl")])


# Undocumented-but-plausible shapes where the two paths used to disagree (regressions).


@pytest.mark.parametrize("body", [{}, None, {"detail": "upstream"}])
def test_5xx_without_error_object_same_on_both_paths(tmp_path, body):
    # regression: Arrow gave no error code/message, the fallback 'http_500' and message '{}' / 'None'
    path = write_lines(tmp_path / "err.jsonl", [{"custom_id": "1", "response": {"status_code": 500, "body": body},
                                                 "error": None}])
    a = read_answers(path)
    assert a == fallback(path)
    assert a.ok == [False]
    assert answer_reason(a.status_code[0], a.content[0], a.finish_reason[0], a.refusal[0], a.has_choice[0],
                         a.error_code[0], a.error_message[0]) == "http_500"


def test_5xx_with_text_body_same_on_both_paths(tmp_path):
    # a body that is a bare string cannot go through Arrow (body is a struct there)
    odd, _ = _equivalent(tmp_path, [{"custom_id": "1", "response": {"status_code": 502, "body": "Bad gateway"},
                                     "error": None}], [])
    assert odd.status_code == [502] and odd.error_message == ["Bad gateway"] and odd.ok == [False]
    assert answer_reason(502, None, None, None, False, odd.error_code[0], odd.error_message[0]) == \
        "http_502: Bad gateway"


def test_line_with_neither_response_nor_error_same_on_both_paths(tmp_path):
    # regression: Arrow said 'malformed response: no choices', the fallback 'no_response'
    path = write_lines(tmp_path / "err.jsonl", [{"custom_id": "1", "response": None, "error": None}])
    a = read_answers(path)
    assert a == fallback(path)
    assert a.error_code == ["no_response"]


def test_string_status_code_same_answers(tmp_path):
    # regression: status_code "200" stayed a str on the fallback path and the join raised TypeError
    line = ok("1")
    odd_line = dict(line, response=dict(line["response"], status_code="200"))
    odd, plain = _equivalent(tmp_path, [odd_line], [line])
    assert odd == plain


# Shapes outside shared/reference/batch-api.md (a line carrying both a response and a top-level error):
# the two paths still disagree.


def test_error_in_body_and_top_level_same_on_both_paths(tmp_path):
    line = {"custom_id": "1", "response": {"status_code": 500, "body": {"error": {"code": "server_error",
                                                                                   "message": "a"}}},
            "error": {"code": "other", "message": "b"}}
    path = write_lines(tmp_path / "err.jsonl", [line])
    assert read_answers(path) == fallback(path)


def test_ok_response_with_top_level_error_same_on_both_paths(tmp_path):
    path = write_lines(tmp_path / "out.jsonl", [dict(ok("1"), error={"code": "x", "message": "y"})])
    assert read_answers(path) == fallback(path)

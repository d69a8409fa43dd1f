"""Tests for pdbatch/backends/download.py: a file parsed while it downloads gives what the file on disk gives."""

from __future__ import annotations

import io

import orjson

import pdbatch.backends.download as download
from pdbatch.backends.download import Download
from pdbatch.core.batchfile import read_answers


def _line(i: int, content: str) -> bytes:
    body = {"choices": [{"message": {"content": content, "refusal": None}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    return orjson.dumps({"custom_id": str(i), "response": {"status_code": 200, "body": body}, "error": None}) + b"\n"


def _upload(client, data: bytes) -> str:
    return client.files.create(file=("out.jsonl", io.BytesIO(data)), purpose="batch").id


def test_a_streamed_parse_equals_the_file_read_from_disk(client, tmp_path):
    data = b"".join(_line(i, f'{{"n": {i}, "s": "r\\u00e9sum\\u00e9 {i}"}}') for i in range(30_000))  # several MB
    path = str(tmp_path / "output-0000.jsonl")
    fetch = Download(client.files.with_streaming_response.content, _upload(client, data), path, "chat")
    fetch()
    assert open(path, "rb").read() == data and not list(tmp_path.glob("*.part"))
    assert fetch.answers is not None
    assert fetch.answers.to_frame().equals(read_answers(path).to_frame())


def test_a_file_arrow_cannot_take_is_left_to_the_disk_reader(client, tmp_path):
    data = _line(1, "fine") + b'{"custom_id": "2", "response": {"status_code": "two hundred"}}\n' + _line(3, "ok")
    path = str(tmp_path / "output-0001.jsonl")
    fetch = Download(client.files.with_streaming_response.content, _upload(client, data), path, "chat")
    fetch()
    assert fetch.answers is None and open(path, "rb").read() == data  # the whole file, for the line-by-line reader
    got = read_answers(path)
    assert sorted(got.custom_id) == ["1", "2", "3"]


def test_a_parser_far_behind_holds_the_download_back_without_a_deadlock(client, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "CHUNK", 1 << 16)
    monkeypatch.setattr(download, "AHEAD", 2 << 16)  # a queue of two chunks: the download must wait for the parser
    data = b"".join(_line(i, f"answer {i}") for i in range(20_000))
    path = str(tmp_path / "output-0002.jsonl")
    fetch = Download(client.files.with_streaming_response.content, _upload(client, data), path, "chat")
    fetch()
    assert open(path, "rb").read() == data and fetch.answers is not None and len(fetch.answers) == 20_000
    bad = b'{"custom_id": "1", "response": {"status_code": "x"}}\n' + data  # the parser stops at once
    fetch = Download(client.files.with_streaming_response.content, _upload(client, bad), path, "chat")
    fetch()
    assert fetch.answers is None and open(path, "rb").read() == bad


_EXITS = """
import io, sys
import pdbatch.backends.download as download
from pdbatch.server import BatchServer

download.CHUNK, download.AHEAD = 1 << 16, 2 << 16
bad = b'{"custom_id": "1", "response": {"status_code": "x"}}\\n' + b"".join(
    b'{"custom_id": "%d", "response": {"status_code": 200, "body": {}}, "error": null}\\n' % i for i in range(50_000))
with BatchServer() as srv:
    client = srv.client(api_key="sk-test", max_retries=0, timeout=10.0)
    file_id = client.files.create(file=("out.jsonl", io.BytesIO(bad)), purpose="batch").id
    fetch = download.Download(client.files.with_streaming_response.content, file_id, sys.argv[1], "chat")
    fetch()
    assert fetch.answers is None
print("fetched")
"""


def test_a_process_whose_parser_stopped_early_still_exits(tmp_path):
    # The parser gives up at the first line while Arrow may have a read pending in its own thread pool:
    # that read must get the end of the input, or the process waits for it at exit for ever.
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _EXITS, str(tmp_path / "output.jsonl")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "fetched", proc.stderr[-2000:]

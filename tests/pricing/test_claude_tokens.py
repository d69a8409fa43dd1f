"""Claude token estimates: Anthropic's ``count_tokens`` on a sample through the real ``anthropic`` SDK, else a factor.

The local server answers ``POST /v1/messages/count_tokens`` with the same count
its Messages answers report as ``usage.input_tokens`` (whitespace words plus a
per-message overhead), so an estimate counted by it can be checked against
what the same ``map`` then reports. Nothing but ``count_tokens`` may be sent.
"""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

import pdbatch  # noqa: F401  (registers .llm)
from pdbatch import pricing
from pdbatch.pricing.claude_tokens import CLAUDE_TOKEN_FACTOR, COUNT_SAMPLE, NEWER_TOKENIZER_FACTOR, count_params

anthropic = pytest.importorskip("anthropic")
COUNT = "/v1/messages/count_tokens"
WORDS = "the quick brown fox jumps over a lazy dog; alpha, beta: gamma! delta? epsilon".split()


@pytest.fixture(autouse=True)
def offline_counter(monkeypatch):
    """pdbatch's own count is the documented heuristic (no tiktoken download); no override leaks."""
    monkeypatch.setenv("PDBATCH_TOKENIZER", "heuristic")
    monkeypatch.delenv("PDBATCH_PRICES", raising=False)
    pricing.reset_prices()
    yield
    pricing.reset_prices()


@pytest.fixture
def make_anthropic():
    made = []

    def factory(srv, **kw):
        kw.setdefault("max_retries", 0)
        made.append(anthropic.Anthropic(base_url=srv.base_url[: -len("/v1")], api_key="sk-ant-test", timeout=10.0,
                                        **kw))
        return made[-1]

    yield factory
    for c in made:
        c.close()


def texts(n: int, seed: int = 1) -> pd.DataFrame:
    """Rows of 1 to 30 words, so that the ratio of two counts differs from row to row."""
    import random

    rng = random.Random(seed)
    return pd.DataFrame({"w": [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]},
                        index=[f"r{i}" for i in range(n)])


def only_counted(srv) -> None:
    """The server saw count_tokens calls and nothing else (no message, no batch)."""
    assert {(m, p) for m, p, _ in srv.stats.log} <= {("POST", COUNT)}
    assert srv.stats.batches_created == 0 and srv.stats.realtime_calls == 0


# ------------------------------------------------------------------ without a client: the factor
def test_offline_claude_estimate_is_the_count_times_the_documented_factor(make_server, monkeypatch):
    frame = texts(8)
    gpt = frame.llm.estimate("say {w}", model="gpt-4o-mini", show=False)
    assert gpt["token_factor"] is None and gpt["input_tokens"] == gpt["input_tokens_uncorrected"]
    est = frame.llm.estimate("say {w}", model="claude-haiku-4-5", show=False)
    assert est["token_factor"] == CLAUDE_TOKEN_FACTOR == 1.3
    assert est["input_tokens"] == math.ceil(est["input_tokens_uncorrected"] * 1.3)
    assert est["tokenizer_note"].startswith("approximate:") and "count_tokens" in est["tokenizer_note"]
    assert "approximate: heuristic x 1.3" in est["summary"]
    newer = frame.llm.estimate("say {w}", model="claude-opus-4-7", show=False)
    assert newer["input_tokens"] == math.ceil(newer["input_tokens_uncorrected"] * NEWER_TOKENIZER_FACTOR)
    # with ANTHROPIC_API_KEY (so the Anthropic backend) but no client: still offline, still the factor, and the
    # output is bounded by the max_tokens pdbatch sends
    srv = make_server()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url[: -len("/v1")])
    env = frame.llm.estimate("say {w}", model="claude-haiku-4-5", show=False)
    assert env["input_tokens"] == est["input_tokens"] and env["output_tokens"] == 8 * 1024 and env["output_default"]
    assert "max_tokens=1024, the default pdbatch sends to Anthropic" in env["summary"]
    assert srv.stats.log == []


# ------------------------------------------------------------------ the server's count_tokens, through the SDK
def test_the_server_counts_tokens_as_its_messages_report_them(make_server, make_anthropic):
    srv = make_server()
    client = make_anthropic(srv)
    params = dict(model="claude-haiku-4-5", system="Be brief.", messages=[{"role": "user", "content": "one two three"}])
    counted = client.messages.count_tokens(**params)
    message = client.messages.create(max_tokens=20, **params)
    assert counted.input_tokens == message.usage.input_tokens == 11  # (3 + 2 words) + (3 + 3 words)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert client.messages.count_tokens(output_config={"format": {"type": "json_schema", "schema": schema}},
                                        **params).input_tokens == 11
    with pytest.raises(anthropic.BadRequestError, match="max_tokens: Extra inputs are not permitted"):
        client.messages.count_tokens(extra_body={"max_tokens": 5}, **params)
    with pytest.raises(anthropic.BadRequestError, match="messages: Field required"):
        client.messages.count_tokens(model="claude-haiku-4-5", messages=[])
    assert srv.stats.calls("POST", COUNT) == 4 and srv.stats.calls("POST", "/v1/messages") == 1


def test_count_params_keep_what_count_tokens_takes_only():
    body = {"model": "claude-haiku-4-5", "max_completion_tokens": 9, "temperature": 0.5, "stop": ["x"],
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"}}}}
    assert count_params(body) == {"model": "claude-haiku-4-5", "system": "sys",
                                  "messages": [{"role": "user", "content": "hi"}],
                                  "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}


# ------------------------------------------------------------------ with a client: Anthropic counts
def test_a_few_requests_are_all_counted_by_anthropic_and_match_the_usage(make_server, make_anthropic):
    srv = make_server()
    client = make_anthropic(srv)
    frame = texts(5)
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}}
    est = frame.llm.estimate("say {w}", model="claude-haiku-4-5", system="Answer.", response_format=schema,
                             client=client, show=False)
    assert srv.stats.calls("POST", COUNT) == 5
    only_counted(srv)
    assert est["tokenizer"] == "anthropic count_tokens" and "all 5 requests" in est["tokenizer_note"]
    out = frame.llm.map("say {w}", model="claude-haiku-4-5", system="Answer.", response_format=schema,
                        client=client, poll_interval=0.02, progress=False, timeout=30)
    assert out["llm_error"].isna().all()
    # the count is Anthropic's (here the server's), the one the answers' usage reports
    assert est["input_tokens"] == out.attrs["pdbatch"]["usage"]["input_tokens"]
    assert est["input_tokens"] != est["input_tokens_uncorrected"]


def test_many_requests_are_scaled_by_a_counted_sample(make_server, make_anthropic):
    srv = make_server()
    client = make_anthropic(srv)
    frame = texts(80)
    est = frame.llm.estimate("say {w}", model="claude-haiku-4-5", client=client, show=False)
    assert srv.stats.calls("POST", COUNT) == COUNT_SAMPLE == 10
    only_counted(srv)
    assert f"sample of {COUNT_SAMPLE} of the 80 requests" in est["tokenizer_note"]
    assert est["input_tokens"] == round(est["input_tokens_uncorrected"] * est["token_factor"])
    again = frame.llm.estimate("say {w}", model="claude-haiku-4-5", client=client, show=False)
    assert again["input_tokens"] == est["input_tokens"]  # a fixed seed: the same map, the same estimate
    out = frame.llm.map("say {w}", model="claude-haiku-4-5", client=client, poll_interval=0.02, progress=False,
                        timeout=30)
    actual = out.attrs["pdbatch"]["usage"]["input_tokens"]
    assert abs(est["input_tokens"] - actual) <= 0.1 * actual  # far closer than the uncorrected count
    assert abs(est["input_tokens_uncorrected"] - actual) > 0.2 * actual
    cached = frame.llm.estimate("say {w}", model="claude-haiku-4-5", client=client, show=False)
    assert cached["cached"] == 80 and cached["input_tokens"] == 0  # nothing to send: nothing counted
    assert srv.stats.calls("POST", COUNT) == 2 * COUNT_SAMPLE


def test_count_tokens_failing_falls_back_to_the_factor_and_says_why(make_server, make_anthropic):
    srv = make_server()
    client = make_anthropic(srv)
    srv.stop(timeout=3.0)  # nothing listens any more: every call fails to connect
    start = time.monotonic()
    est = texts(3).llm.estimate("say {w}", model="claude-haiku-4-5", client=client, show=False)
    assert time.monotonic() - start < 20
    assert est["token_factor"] == CLAUDE_TOKEN_FACTOR
    assert est["input_tokens"] == math.ceil(est["input_tokens_uncorrected"] * CLAUDE_TOKEN_FACTOR)
    assert "count_tokens failed (APIConnectionError" in est["tokenizer_note"]
    assert srv.stats.log == []  # stopped: it saw nothing

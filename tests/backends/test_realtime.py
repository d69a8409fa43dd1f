"""The realtime backend and its rate limiter, through the real openai SDK over HTTP
against the local server (tests/conftest.py). No mocks.

Each test bounds its waits (``timeout=`` on ``map``, short latencies and
backoffs); "no request sent twice" is checked by counting the server's
realtime calls and the engine's calls.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import openai
import pandas as pd
import pytest

from pdbatch.pricing.tokens import IMAGE_TOKENS, MESSAGE_OVERHEAD, REQUEST_OVERHEAD

import pdbatch  # noqa: F401  (registers .llm)
from pdbatch.backends.realtime import CANCELLED, INTERRUPTED, Realtime, async_client
from pdbatch.server.engines import EngineError, ScriptedEngine
from pdbatch.errors import JobError, OptionError
from pdbatch.backends.ratelimit import (
    CHARS_PER_TOKEN,
    RateLimiter,
    count_tokens,
    estimate_tokens,
    parse_duration,
)
from pdbatch.backends.retry import retry_after
from pdbatch.core.records import EMBEDDINGS_URL, Request
from pdbatch.server import Faults
from pdbatch.job.store import default_store
from tests.backends.ctrl_c import ctrl_c_after_first  # noqa: E402

from tests.conftest import TEST_KEY

FAST = dict(model="gpt-4o-mini", progress=False, timeout=20)
SCHEMA = {
    "type": "object",
    "properties": {"country": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["country", "population"],
    "additionalProperties": False,
}


def rt(client, **kw) -> Realtime:
    """A backend with test-sized backoffs."""
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_backoff", 0.05)
    return Realtime(client, **kw)


def words(n: int, index=None) -> pd.DataFrame:
    return pd.DataFrame({"w": [f"word{i}" for i in range(n)]}, index=index)


def statuses(srv, status: int) -> int:
    return sum(1 for m, p, s in srv.stats.log if p.startswith("/v1/chat") and s == status)


# ------------------------------------------------------------------ answers land on their rows
def test_text_answers_land_on_their_rows_in_any_arrival_order(make_server, make_client):
    def reply(text, body):  # later rows answer first
        time.sleep({"a": 0.15, "b": 0.1, "c": 0.05, "d": 0.0}[text[-1]])
        return text.upper()

    eng = ScriptedEngine(reply)
    srv = make_server(engine=eng)
    df = pd.DataFrame({"w": ["row a", "row b", "row c", "row d"], "n": [1, 2, 3, 4]}, index=["z", "x", "y", 7])
    out = df.llm.map("{w}", backend=rt(make_client(srv), max_concurrency=4), **FAST)
    assert list(out.index) == ["z", "x", "y", 7]
    assert out["llm_output"].tolist() == ["ROW A", "ROW B", "ROW C", "ROW D"]
    assert out["llm_error"].isna().all()
    meta = out.attrs["pdbatch"]
    assert meta["backend"] == "realtime" and meta["state"] == "completed"
    assert meta["counts"]["succeeded"] == 4 and meta["usage"]["output_tokens"] == 8
    assert meta["realtime"]["attempts"] == 4 and meta["realtime"]["retries"] == 0
    assert srv.stats.realtime_calls == 4 and eng.calls == 4


def test_schema_answers(make_server, make_client):
    srv = make_server()
    df = pd.DataFrame({"city": ["Paris", "Lima", "Oslo"]}, index=[30, 10, 20])
    out = df.llm.map("Country of {city}?", response_format=SCHEMA, backend=rt(make_client(srv)), **FAST)
    assert out["llm_error"].isna().all(), out["llm_error"].tolist()
    assert list(out.columns) == ["city", "country", "population", "llm_error"]
    assert out["country"].tolist() == ["Country of Paris?", "Country of Lima?", "Country of Oslo?"]
    assert out["population"].map(type).eq(int).all()


def test_head_quick_try_by_name_with_the_client_from_the_environment(make_server, monkeypatch):
    srv = make_server()
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    df = words(50)
    out = df.head(5).llm.map("Say {w}", backend="realtime", max_concurrency=2, rpm=60_000, **FAST)
    assert out["llm_output"].tolist() == [f"Say word{i}" for i in range(5)]
    assert srv.stats.realtime_calls == 5


def test_a_rerun_pays_nothing(make_server, make_client):
    srv = make_server()
    df = words(6)
    first = df.llm.map("Say {w}", backend=rt(make_client(srv)), **FAST)
    again = df.llm.map("Say {w}", backend=rt(make_client(srv)), **FAST)
    assert srv.stats.realtime_calls == 6
    assert again["llm_output"].tolist() == first["llm_output"].tolist()


def test_embeddings_dispatch_on_the_request_url(make_server, make_client):
    srv = make_server()
    be = rt(make_client(srv))
    res = be.answer([Request("a", {"model": "e", "input": "hello", "dimensions": 4}, url=EMBEDDINGS_URL),
                     Request("b", {"model": "m", "input": "x"}, url="/v1/moderations")])
    by_id = {r.custom_id: r for r in res}
    vec = by_id["a"].body["data"][0]["embedding"]
    assert by_id["a"].ok and len(vec) == 4 and all(isinstance(x, float) for x in vec)
    assert by_id["a"].body["usage"]["prompt_tokens"] >= 1
    assert by_id["b"].error["code"] == "client_error" and "/v1/moderations" in by_id["b"].error["message"]
    assert srv.stats.calls("POST", "/v1/embeddings") == 1 and srv.stats.realtime_calls == 1


def test_unknown_body_fields_go_in_extra_body(make_server, make_client):
    eng = ScriptedEngine(lambda text, body: str(body.get("provider_flag")))
    srv = make_server(engine=eng)
    out = words(2).llm.map("{w}", backend=rt(make_client(srv)), extra_body={"provider_flag": "on"}, **FAST)
    assert out["llm_output"].tolist() == ["on", "on"]


# ------------------------------------------------------------------ retries, 429s and limits
def test_429s_pause_every_sender_and_are_retried_once(make_server, make_client):
    seen, refused = [], []
    eng = ScriptedEngine(lambda text, body: seen.append(time.monotonic()) or text)
    srv = make_server(engine=eng, faults=Faults(realtime_errors=[429], retry_after=0.5, realtime_latency=0.05))
    srv.faults.on_response = lambda m, p, s: refused.append(time.monotonic()) if s == 429 else None
    out = words(12).llm.map("{w}", backend=rt(make_client(srv), max_concurrency=4), **FAST)
    assert out["llm_error"].isna().all()
    assert srv.stats.realtime_calls == 13 and eng.calls == 12  # one refused call, no row answered twice
    assert len(refused) == 1
    # The 429 held all four senders, not only the refused one: the three calls in flight
    # reached the engine ~0.05 s after it, then nothing did until the retry-after passed.
    after = sorted(t - refused[0] for t in seen)
    assert not [t for t in after if 0.15 < t < 0.4], after
    meta = out.attrs["pdbatch"]["realtime"]
    assert (meta["attempts"], meta["retries"], meta["429s"]) == (13, 1, 1)


def test_server_rate_limit_is_learned_from_headers(make_server, make_client):
    eng = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=eng, faults=Faults(realtime_rpm=4, rate_window=0.5))
    t0 = time.monotonic()
    out = words(12).llm.map("{w}", backend=rt(make_client(srv), max_concurrency=8, rate_period=0.5), **FAST)
    elapsed = time.monotonic() - t0
    assert out["llm_error"].isna().all(), out["llm_error"].tolist()
    assert eng.calls == 12  # every row answered exactly once
    meta = out.attrs["pdbatch"]["realtime"]
    assert meta["429s"] == statuses(srv, 429) == srv.stats.realtime_calls - 12
    assert meta["server_limits"] == {"requests": 4}
    assert elapsed >= 1.0  # 4 per 0.5 s window: 12 rows need two full windows


def test_given_rpm_paces_under_the_server_limit(make_server, make_client):
    srv = make_server(faults=Faults(realtime_rpm=5, rate_window=0.5))
    t0 = time.monotonic()
    out = words(10).llm.map("{w}", backend=rt(make_client(srv), max_concurrency=8, rpm=5, rate_period=0.5),
                            **FAST)
    assert out["llm_error"].isna().all()
    assert time.monotonic() - t0 >= 0.9  # evenly spaced: 0.1 s apart and a bit
    assert statuses(srv, 429) <= 1


def test_5xx_are_retried_and_a_400_is_not(make_server, make_client):
    def reply(text, body):
        if text == "word3":
            raise EngineError(400, "context_length_exceeded", "too long for this model")
        return text

    eng = ScriptedEngine(reply)
    srv = make_server(engine=eng, faults=Faults(realtime_errors=[500, 503, 502]))
    out = words(6).llm.map("{w}", backend=rt(make_client(srv), max_concurrency=2), **FAST)
    assert out.at[3, "llm_error"] == "context_length_exceeded: too long for this model"
    assert out.drop(index=3)["llm_error"].isna().all()
    assert srv.stats.realtime_calls == 9 and eng.calls == 6
    assert out.attrs["pdbatch"]["realtime"]["retries"] == 3


def test_tpm_paces_by_estimated_tokens(make_server, make_client):
    srv = make_server()
    body = {"messages": [{"role": "user", "content": "word0"}], "max_completion_tokens": 5}
    per_row = estimate_tokens(body)
    t0 = time.monotonic()
    out = words(6).llm.map("{w}", backend=rt(make_client(srv), tpm=per_row * 10, rate_period=1.0),
                           max_completion_tokens=5, **FAST)
    assert out["llm_error"].isna().all()
    assert 0.45 < time.monotonic() - t0 < 3.0  # 10 rows' worth of tokens per second: 0.1 s apart


def test_an_empty_account_is_not_retried(make_server, make_client):
    def reply(text, body):
        raise EngineError(429, "insufficient_quota", "You exceeded your current quota.")

    eng = ScriptedEngine(reply)
    srv = make_server(engine=eng)
    out = words(2).llm.map("{w}", backend=rt(make_client(srv), max_concurrency=1), **FAST)
    assert out["llm_error"].tolist() == ["insufficient_quota: You exceeded your current quota."] * 2
    assert eng.calls == 2 and out.attrs["pdbatch"]["realtime"]["retries"] == 0


def test_an_injected_400_is_final(make_server, make_client):
    srv = make_server(faults=Faults(realtime_errors=[400]))
    out = words(3).llm.map("{w}", backend=rt(make_client(srv), max_concurrency=1), **FAST)
    assert out.at[0, "llm_error"].startswith("invalid_request: Bad request")
    assert out["llm_error"].notna().sum() == 1 and srv.stats.realtime_calls == 3


def test_attempts_are_capped_then_the_row_is_an_error_cell(make_server, make_client):
    srv = make_server(faults=Faults(realtime_errors=[500] * 3 + [429] * 3, retry_after=0.01))
    out = words(2).llm.map("{w}", backend=rt(make_client(srv), max_concurrency=1, max_attempts=3), **FAST)
    assert out["llm_error"].tolist() == [
        "server_error: The server had an error while processing your request. (gave up after 3 attempts)",
        "rate_limit_exceeded: Rate limit reached; please try again later. (gave up after 3 attempts)",
    ]
    assert srv.stats.realtime_calls == 6


def test_timeouts_are_retried(make_server, make_client):
    first = threading.Event()

    def reply(text, body):
        if not first.is_set():
            first.set()
            time.sleep(0.6)
        return text

    eng = ScriptedEngine(reply)
    srv = make_server(engine=eng)
    out = words(1).llm.map("{w}", backend=rt(make_client(srv, timeout=0.3)), **FAST)
    assert out["llm_output"].tolist() == ["word0"] and eng.calls == 2
    assert out.attrs["pdbatch"]["realtime"]["retries"] == 1


def test_connection_errors_are_retried_then_reported(make_server, make_client):
    srv = make_server()
    client = make_client(srv)
    srv.stop()
    out = words(2).llm.map("{w}", backend=rt(client, max_attempts=2), **FAST)
    assert out["llm_error"].str.startswith("connection_error: APIConnectionError").all()
    assert out["llm_error"].str.endswith("(gave up after 2 attempts)").all()


# ------------------------------------------------------------------ stopping and resuming
def test_timeout_then_rerun_sends_only_the_rest(make_server, make_client):
    srv = make_server(faults=Faults(realtime_latency=0.25))
    df = words(8)
    with pytest.raises(JobError, match="answers are kept"):
        df.llm.map("{w}", backend=rt(make_client(srv), max_concurrency=2), **dict(FAST, timeout=0.4))
    sent = srv.stats.realtime_calls
    job_id = pdbatch.jobs()["job_id"][0]
    assert 2 <= sent < 8 and default_store().count_answers(job_id) == sent  # calls in flight were kept
    out = df.llm.map("{w}", backend=rt(make_client(srv), max_concurrency=4), **FAST)
    assert out["llm_error"].isna().all() and out["llm_output"].tolist() == [f"word{i}" for i in range(8)]
    assert srv.stats.realtime_calls == 8  # no row sent twice
    assert out.attrs["pdbatch"]["job_id"] == job_id and out.attrs["pdbatch"]["realtime"]["attempts"] == 8 - sent


_CtrlCAfterFirst = ctrl_c_after_first(Realtime)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_keeps_answers_and_resumes(make_server, make_client):
    # Python's own Ctrl-C handler, even where the test runner was started with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    srv = make_server(faults=Faults(realtime_latency=0.1))
    be = _CtrlCAfterFirst(make_client(srv), max_concurrency=1)
    job = words(5).llm.submit("{w}", model="gpt-4o-mini", backend=be)
    try:
        with pytest.warns(UserWarning, match="interrupted: "):
            out = job.wait(progress=False, timeout=20).result()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert out.attrs["pdbatch"]["state"] == "cancelled"
    answered = out["llm_error"].isna().sum()
    assert 1 <= answered <= 2  # the call in flight finished; the others were not sent
    assert set(out.loc[out["llm_error"].notna(), "llm_error"]) == {INTERRUPTED}
    assert srv.stats.realtime_calls == answered
    again = job.wait(progress=False, timeout=20).result()
    assert again["llm_error"].isna().all() and again.attrs["pdbatch"]["state"] == "completed"
    assert srv.stats.realtime_calls == 5


def test_cancel(make_server, make_client):
    srv = make_server(faults=Faults(realtime_latency=0.2))
    job = words(3).llm.submit("{w}", model="gpt-4o-mini", backend=rt(make_client(srv)))
    job.cancel()
    out = job.wait(progress=False, timeout=20).result()
    assert out["llm_error"].tolist() == [CANCELLED] * 3 and srv.stats.realtime_calls == 0
    # cancelling from another thread while waiting keeps what arrived
    job = words(12).llm.submit("{w}", model="gpt-4o-mini", backend=rt(make_client(srv), max_concurrency=2))

    def cancel_after_two() -> None:  # once two answers are stored (bounded: 10 s), not after a fixed delay
        deadline = time.monotonic() + 10
        while job.count_answers() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        job.cancel()

    threading.Thread(target=cancel_after_two, daemon=True).start()
    out = job.wait(progress=False, timeout=20).result()
    assert out.attrs["pdbatch"]["state"] == "cancelled"
    done = out["llm_error"].isna().sum()
    assert 2 <= done < 12 and srv.stats.realtime_calls == done
    assert set(out["llm_error"].dropna()) == {CANCELLED}


def test_map_inside_a_running_event_loop(make_server, make_client):
    srv = make_server()

    async def notebook_cell():
        assert asyncio.get_running_loop().is_running()
        return words(4).llm.map("{w}", backend=rt(make_client(srv)), **FAST)

    out = asyncio.run(notebook_cell())
    assert out["llm_output"].tolist() == ["word0", "word1", "word2", "word3"]


# ------------------------------------------------------------------ the client and secrets
def test_async_client_copies_the_sync_settings(make_server, make_client):
    srv = make_server()
    sync = make_client(srv, organization="org-1", project="proj-1", default_headers={"X-Trace": "t1"},
                       timeout=3.5, max_retries=5)
    a = async_client(sync)
    assert isinstance(a, openai.AsyncOpenAI)
    assert (str(a.base_url), a.api_key, a.organization, a.project, a.timeout, a.max_retries) == (
        str(sync.base_url), TEST_KEY, "org-1", "proj-1", 3.5, 0)
    assert a.default_headers["X-Trace"] == "t1" and a.default_headers["X-Stainless-Async"] != "false"


def test_unsupported_clients_and_options_fail_before_any_work(make_server, make_client):
    client = make_client(make_server())
    azure = openai.AzureOpenAI(api_key="k", azure_endpoint="https://x.openai.azure.com", api_version="2024-10-21")
    with pytest.raises(OptionError, match="Azure"):
        Realtime(azure)
    for bad in (dict(max_concurrency=0), dict(rpm=-1), dict(tpm="many"), dict(max_attempts=True),
                dict(rate_period=0)):
        with pytest.raises(OptionError):
            Realtime(client, **bad)


def test_the_store_holds_no_api_key(make_server, make_client, pdbatch_home):
    srv = make_server(faults=Faults(realtime_errors=[429, 500]))
    out = words(3).llm.map("{w}", backend=rt(make_client(srv)), **FAST)
    assert out["llm_error"].isna().all()
    assert not default_store().raw_bytes_contain(TEST_KEY.encode())
    for root, _, files in os.walk(pdbatch_home):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                assert TEST_KEY.encode() not in fh.read(), name


# ------------------------------------------------------------------ the limiter
def run(coro):
    return asyncio.run(coro)


async def timed(lim: RateLimiter, n: int, tokens: int = 0) -> float:
    t0 = time.monotonic()
    for _ in range(n):
        assert await lim.acquire(tokens)
        lim.sent(tokens)
    return time.monotonic() - t0


def test_limiter_paces_requests_and_tokens():
    assert 0.35 < run(timed(RateLimiter(rpm=600), 5)) < 1.0  # 0.1 s apart (and 3 %)
    assert 0.15 < run(timed(RateLimiter(tpm=60_000), 3, tokens=100)) < 0.8  # 1000 tokens/s
    assert run(timed(RateLimiter(), 50)) < 0.1  # no limits: no waiting


def test_limiter_learns_from_headers_but_never_raises_a_given_limit():
    lim = RateLimiter(rpm=10)
    lim.observe(lim.sent(), {"x-ratelimit-limit-requests": "100"})
    assert lim.rpm == 10 and not lim.learned
    lim.observe(lim.sent(), {"x-ratelimit-limit-requests": "5", "x-ratelimit-limit-tokens": "1000"})
    assert (lim.rpm, lim.tpm, lim.learned) == (5, 1000, {"requests": 5, "tokens": 1000})
    assert lim.counts_tokens and not RateLimiter().counts_tokens


def test_limiter_waits_for_the_reset_when_the_server_says_none_remain():
    lim = RateLimiter()
    first = lim.sent()
    lim.observe(first, {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "250ms"})
    assert run(timed(lim, 1)) < 0.05  # one remained
    assert 0.15 < run(timed(lim, 1)) < 0.6  # that one is spent now: wait for the reset


def test_limiter_shared_pause_and_stop():
    lim = RateLimiter()
    lim.pause(0.2)
    assert 0.15 < run(timed(lim, 1)) < 0.6

    async def stopped():
        stop = asyncio.Event()
        lim.pause(5.0)
        asyncio.get_running_loop().call_later(0.05, stop.set)
        t0 = time.monotonic()
        return await lim.acquire(0, stop), time.monotonic() - t0

    ok, took = run(stopped())
    assert ok is False and took < 1.0


def test_headers_and_token_estimates():
    assert parse_duration("1m30.5s") == 90.5 and parse_duration("0.5s") == 0.5 and parse_duration("") is None
    assert retry_after({"retry-after-ms": "1500"}) == 1.5 and retry_after({"retry-after": "nope"}) is None
    assert 0 <= retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) < 1
    text = "The quick brown fox jumps over the lazy dog. " * 4
    n = count_tokens(text)
    assert 0.5 * len(text) / CHARS_PER_TOKEN <= n <= 1.5 * len(text) / CHARS_PER_TOKEN
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": text},
                                                      {"type": "image_url", "image_url": {"url": "x"}}]}],
            "max_completion_tokens": 50, "n": 2}
    assert estimate_tokens(body) == (REQUEST_OVERHEAD + MESSAGE_OVERHEAD + count_tokens("Be brief.") + MESSAGE_OVERHEAD
                                     + n + IMAGE_TOKENS + 100)
    assert estimate_tokens({"input": ["ab" * 8, [1, 2, 3]]}, EMBEDDINGS_URL) == count_tokens("ab" * 8) + 3


def test_job_load_resumes_a_stopped_realtime_run(make_server, make_client):
    """A realtime job stopped by its timeout, loaded by id (a restarted kernel), sends only the rest."""
    import pdbatch
    from pdbatch.errors import JobError
    from pdbatch.server import Faults

    srv = make_server(faults=Faults(realtime_latency=0.1))
    df = pd.DataFrame({"t": [f"row {i}" for i in range(12)]})
    job = df.llm.submit("{t}", model="m", backend="realtime", client=make_client(srv), max_concurrency=2)
    with pytest.raises(JobError):
        job.wait(progress=False, timeout=0.35)
    first = srv.stats.realtime_calls
    assert 0 < first < 12
    loaded = pdbatch.Job.load(job.id, client=make_client(srv))
    out = loaded.wait(progress=False, timeout=30).result()
    assert out["llm_output"].tolist() == df["t"].tolist()
    assert srv.stats.realtime_calls == 12  # the rest only: rows in flight at the stop kept their answers

"""The one retry policy (pdbatch.backends.retry): unit tests of the decision, then both
backends retrying through the real openai SDK over HTTP against the local server.

The errors the policy judges are the SDK's own, raised by real calls to the local
server with injected faults (``Faults.http_errors``); nothing is mocked. The
end-to-end tests give their clients SDK retries on purpose: the log records prove
that pdbatch, not the SDK, made every retry (the server saw no extra call).
"""

from __future__ import annotations

import email.utils
import logging
import time

import importlib.util

import openai
import pandas as pd
import pytest

import pdbatch  # noqa: F401  (registers .llm)
from pdbatch.backends.realtime import Realtime
from pdbatch.backends.retry import (
    FINAL_CODES,
    RETRYABLE_CODES,
    TRANSIENT_ERRORS,
    RetryPolicy,
    backoff_delay,
    error_code,
    retry_after,
    retryable,
    retryable_status,
    transient,
)
from pdbatch.core.batchfile import CORRUPT_LINE
from pdbatch.errors import OptionError, PdbatchError
from pdbatch.server import Faults



@pytest.fixture
def sdk_errors(make_server, make_client):
    """``sdk_errors(*statuses, retry_after=0.05)``: the SDK's exceptions for those answers of the server."""

    def get(*statuses: int, retry_after: float = 0.05) -> list:
        srv = make_server(faults=Faults(http_errors={"GET /v1/files": list(statuses)}, retry_after=retry_after))
        client = make_client(srv)
        errors = []
        for _ in statuses:
            with pytest.raises(openai.APIStatusError) as info:
                client.files.list()
            errors.append(info.value)
        return errors

    return get


def retry_records(caplog):
    return [r for r in caplog.records if r.name == "pdbatch" and hasattr(r, "attempt")]


# ------------------------------------------------------------------ Retry-After
def test_retry_after_ms_wins_over_seconds(sdk_errors):
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    (limited,) = sdk_errors(429, retry_after=0.02)  # the SDK's headers: retry-after-ms 20, retry-after 0
    assert retry_after(limited.response.headers) == 0.02
    assert retry_after({"retry-after-ms": "-5", "retry-after": "2"}) == 2.0  # a negative ms is ignored


def test_retry_after_seconds():
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "0.25"}) == 0.25
    assert retry_after({"retry-after": "-4"}) == 0.0


def test_retry_after_http_date():
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after({"retry-after": date}, now=now) == 30.0
    assert retry_after({"retry-after": email.utils.formatdate(now - 60, usegmt=True)}, now=now) == 0.0
    live = retry_after({"retry-after": email.utils.formatdate(time.time() + 10, usegmt=True)})
    assert 8.0 <= live <= 10.0


@pytest.mark.parametrize("headers", [None, {}, {"retry-after": "soon"}, {"retry-after": ""},
                                     {"retry-after": "nan"}, {"retry-after-ms": "x"},
                                     {"retry-after": "Mon, 99 Foo 20xx 25:61:00 GMT"}])
def test_retry_after_garbage_asks_nothing(headers):
    assert retry_after(headers) is None


# ------------------------------------------------------------------ what is retried
def test_statuses():
    assert [s for s in range(400, 600) if retryable_status(s)] == [408, 409, 429, *range(500, 600)]
    assert not retryable_status(None) and not retryable_status(200)


def test_a_4xx_is_never_retried(sdk_errors):
    for err in sdk_errors(400, 401, 403, 404, 413, 422):
        assert not retryable(err) and RetryPolicy().delay(err, 1) is None, err.status_code


def test_408_409_429_5xx_are_retried(sdk_errors):
    for err in sdk_errors(408, 409, 429, 500, 502, 503, 504):
        assert retryable(err) and RetryPolicy().delay(err, 1) is not None, err.status_code


def test_final_codes(sdk_errors):
    (limited,) = sdk_errors(429)
    assert error_code(limited) == "rate_limit_exceeded" and retryable(limited)
    # The same answer for an account without credit (the server cannot send that code: rebuild the SDK's error).
    quota = openai.RateLimitError("You exceeded your current quota", response=limited.response,
                                  body={"message": "You exceeded your current quota", "code": "insufficient_quota"})
    assert error_code(quota) == "insufficient_quota" in FINAL_CODES
    assert RetryPolicy().delay(quota, 1) is None


def test_connection_errors_and_timeouts_are_transient(make_server, make_client):
    srv = make_server(faults=Faults(realtime_latency=0.4))
    with pytest.raises(openai.APITimeoutError) as timed_out:
        make_client(srv, timeout=0.1).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    client = make_client(srv)
    srv.stop()
    with pytest.raises(openai.APIConnectionError) as refused:
        client.files.list()
    for err in (timed_out.value, refused.value):
        assert isinstance(err, TRANSIENT_ERRORS) and RetryPolicy().delay(err, 1) is not None
    assert not retryable(ValueError("a bug is not transient"))
    assert {"batch_expired", "server_error", "rate_limit_exceeded"} <= RETRYABLE_CODES
    assert not RETRYABLE_CODES & FINAL_CODES


# ------------------------------------------------------------------ how long
def test_backoff_jitter_bounds_and_cap():
    for attempt in range(1, 12):
        full = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert backoff_delay(attempt, rng=lambda: 0.0) == full / 2
        assert backoff_delay(attempt, rng=lambda: 1.0) == full
        for _ in range(50):
            assert full / 2 <= backoff_delay(attempt) <= full <= 8.0


def test_policy_caps_attempts_and_retry_after(sdk_errors):
    policy = RetryPolicy(max_attempts=3, backoff=0.1, max_backoff=0.4, max_retry_after=5.0, rng=lambda: 1.0)
    (honoured,) = sdk_errors(429, retry_after=2.0)
    assert policy.delay(honoured, 1) == 2.0 and policy.delay(honoured, 2) == 2.0
    assert policy.delay(honoured, 3) is None  # the last of max_attempts
    (too_long,) = sdk_errors(429, retry_after=600.0)  # 10 minutes > max_retry_after: back off instead
    assert [policy.delay(too_long, a) for a in (1, 2)] == [0.1, 0.2]
    (silent,) = sdk_errors(500)
    assert [RetryPolicy(10, 0.1, 0.4, rng=lambda: 1.0).delay(silent, a) for a in (1, 2, 3, 4, 9)] \
        == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert RetryPolicy(max_attempts=1).delay(silent, 1) is None


def test_log_record(sdk_errors, caplog):
    caplog.set_level(logging.DEBUG, logger="pdbatch")
    RetryPolicy(max_attempts=4).log("batches.create", sdk_errors(503)[0], 2, 1.5)
    (rec,) = retry_records(caplog)
    assert (rec.levelno, rec.what, rec.attempt, rec.max_attempts, rec.wait, rec.status) \
        == (logging.DEBUG, "batches.create", 2, 4, 1.5, 503)
    assert "HTTP 503" in rec.getMessage() and "attempt 2 of 4" in rec.getMessage()


def test_log_record_of_a_time_bounded_policy(sdk_errors, caplog):
    caplog.set_level(logging.DEBUG, logger="pdbatch")
    RetryPolicy(max_attempts=None, max_elapsed=120).log("batches.create", sdk_errors(429)[0], 7, 0.05)
    (rec,) = retry_records(caplog)
    assert rec.max_attempts is None and rec.attempt == 7 and rec.status == 429
    assert "attempt 7 failed, giving up 120 s after the first" in rec.getMessage()


# ------------------------------------------------------------------ bounded by time
def test_policy_needs_a_bound():
    with pytest.raises(OptionError, match="retry forever"):
        RetryPolicy(max_attempts=None)
    with pytest.raises(OptionError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(OptionError, match="max_elapsed"):
        RetryPolicy(max_elapsed=-1.0)


def test_max_elapsed_bounds_by_time_not_by_count(sdk_errors):
    policy = RetryPolicy(max_attempts=None, max_elapsed=120.0, backoff=1.0, max_backoff=30.0, max_retry_after=120.0,
                         rng=lambda: 1.0)
    (asked,) = sdk_errors(429, retry_after=2.0)
    (silent,) = sdk_errors(503)
    (bad,) = sdk_errors(400)
    assert policy.delay(asked, 50, elapsed=10.0) == 2.0  # the 50th attempt still waits what the server asks
    assert policy.delay(asked, 2, elapsed=117.9) == 2.0
    assert policy.delay(asked, 2, elapsed=119.0) is None  # the asked wait would end after the deadline
    assert policy.delay(silent, 6, elapsed=100.0) == 20.0  # backoff 30 s, shortened to the 20 s left
    assert policy.delay(silent, 2, elapsed=120.0) is None
    assert policy.delay(bad, 1, elapsed=0.0) is None  # never worth it
    both = RetryPolicy(max_attempts=3, max_elapsed=120.0)
    assert both.delay(asked, 2, elapsed=1.0) == 2.0 and both.delay(asked, 3, elapsed=1.0) is None
    assert RetryPolicy().delay(asked, 2, elapsed=1e9) == 2.0  # no max_elapsed: time does not count


def _keep_trying(client, policy, limit=200):
    """Call ``files.list`` the way a caller of the policy does: measure time, ask ``delay``, sleep."""
    started, waits = time.monotonic(), []
    for attempt in range(1, limit + 1):  # bounded: the policy must end it well before
        try:
            return client.files.list(), waits, time.monotonic() - started
        except openai.APIStatusError as err:
            wait = policy.delay(err, attempt, elapsed=time.monotonic() - started)
            if wait is None:
                return err, waits, time.monotonic() - started
            waits.append(wait)
            time.sleep(wait)
    raise AssertionError("the policy never stopped")


def test_a_long_429_storm_is_outlasted_honouring_retry_after(make_server, make_client):
    # Nine 429s in a row: five attempts would have lost; a time bound keeps going, at the server's pace.
    srv = make_server(faults=Faults(http_errors={"GET /v1/files": [429] * 9}, retry_after=0.03))
    policy = RetryPolicy(max_attempts=None, max_elapsed=30.0)
    got, waits, took = _keep_trying(make_client(srv), policy)
    assert not isinstance(got, Exception)
    assert waits == [0.03] * 9 and took >= 0.27
    assert [s for m, p, s in srv.stats.log if p == "/v1/files"] == [429] * 9 + [200]


def test_an_endless_429_gives_up_after_max_elapsed(make_server, make_client):
    srv = make_server(faults=Faults(http_errors={"GET /v1/files": [429] * 1000}, retry_after=0.05))
    got, waits, took = _keep_trying(make_client(srv), RetryPolicy(max_attempts=None, max_elapsed=0.5))
    assert isinstance(got, openai.RateLimitError)
    assert 0.45 <= took < 3.0 and 5 <= len(waits) <= 10


# ------------------------------------------------------------------ polling
def test_transient_for_polls_and_downloads(sdk_errors, make_server, make_client):
    unavailable, limited, missing = sdk_errors(503, 429, 404)
    assert transient(unavailable) and transient(limited) and not transient(missing)
    down = make_server()
    dead = make_client(down)
    down.stop()
    with pytest.raises(openai.APIConnectionError) as refused:
        dead.batches.retrieve("batch_x")
    assert transient(refused.value)
    # Errors while a streamed download is read are the HTTP library's own (the SDK does not wrap them).
    httpx = pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")
    for err in (httpx.ReadError("reset"), httpx.RemoteProtocolError("peer closed connection"),
                httpx.ReadTimeout("slow"), ConnectionResetError(), TimeoutError()):
        assert transient(err), err
    for err in (ValueError("bug"), httpx.UnsupportedProtocol("ftp"), KeyError("x")):
        assert not transient(err), err


def test_corrupt_line_rows_are_retryable():
    assert CORRUPT_LINE in RETRYABLE_CODES


# ------------------------------------------------------------------ through the SDK and the server
def test_realtime_retries_429_then_500_and_logs_each(make_server, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="pdbatch")
    srv = make_server(faults=Faults(realtime_errors=[429, 500], retry_after=0.02))
    backend = Realtime(make_client(srv, max_retries=3), max_concurrency=1, backoff=0.01, max_backoff=0.05)
    df = pd.DataFrame({"w": ["only"]})
    out = df.llm.map("{w}", model="gpt-4o-mini", backend=backend, progress=False, timeout=20, cache=False)
    assert out["llm_output"].tolist() == ["only"] and out["llm_error"].isna().all()
    assert srv.stats.realtime_calls == 3  # 429, 500, 200: no SDK retry on top
    recs = retry_records(caplog)
    assert [(r.attempt, r.status) for r in recs] == [(1, 429), (2, 500)]
    assert recs[0].wait == 0.02  # the server's retry-after-ms
    assert 0.01 <= recs[1].wait <= 0.02  # backoff for attempt 2: 0.02 with jitter
    assert all(r.levelno == logging.DEBUG and "/v1/chat/completions" in r.what for r in recs)


def test_realtime_400_is_final_and_not_logged(make_server, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="pdbatch")
    srv = make_server(faults=Faults(realtime_errors=[400]))
    backend = Realtime(make_client(srv), max_concurrency=1, backoff=0.01, max_backoff=0.05)
    out = pd.DataFrame({"w": ["a"]}).llm.map("{w}", model="m", backend=backend, progress=False, timeout=20,
                                             cache=False)
    assert out["llm_error"].notna().all() and srv.stats.realtime_calls == 1
    assert retry_records(caplog) == []


def _creates(srv):
    return [s for m, p, s in srv.stats.log if m == "POST" and p == "/v1/batches"]


def test_batch_create_retries_503_then_429_and_logs_each(make_server, make_client, caplog):
    caplog.set_level(logging.INFO, logger="pdbatch")
    srv = make_server(faults=Faults(http_errors={"POST /v1/batches": [503, 429]}, retry_after=0.02))
    df = pd.DataFrame({"w": ["x", "y"]})
    out = df.llm.map("{w}", model="m", client=make_client(srv, max_retries=3), backend="batch",
                     poll_interval=0.02, max_poll_interval=0.1, progress=False, timeout=30, cache=False)
    assert out["llm_output"].tolist() == ["x", "y"]
    assert _creates(srv) == [503, 429, 200] and srv.stats.batches_created == 1
    recs = retry_records(caplog)
    assert [(r.attempt, r.status, r.levelno) for r in recs] == [(1, 503, logging.INFO), (2, 429, logging.INFO)]
    assert 0.5 <= recs[0].wait <= 1.0  # no retry-after on the 503: backoff from 1 s, with jitter
    assert recs[1].wait == 0.02  # the server's retry-after-ms
    assert all(r.what.startswith("batches.create for shard 0") for r in recs)


def test_batch_create_400_raises_at_once(make_server, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="pdbatch")
    srv = make_server(faults=Faults(http_errors={"POST /v1/batches": [400]}))
    with pytest.raises(PdbatchError, match=r"refused to create the batch .*HTTP 400"):
        pd.DataFrame({"w": ["x"]}).llm.map("{w}", model="m", client=make_client(srv, max_retries=3),
                                           backend="batch", progress=False, timeout=30, cache=False)
    assert _creates(srv) == [400] and retry_records(caplog) == []

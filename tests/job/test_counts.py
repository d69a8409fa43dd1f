"""``attrs["pdbatch"]["counts"]`` says what this call did: ``sent`` (requests it sent), ``cached``
(rows answered from the cache or an earlier run of the same job) and ``resumed`` (rows an earlier
run sent that this call picked up in flight). Counted against what the server saw."""

from __future__ import annotations

import pandas as pd

import pdbatch
from pdbatch.server import Faults
from pdbatch.server.engines import ScriptedEngine

FAST = dict(model="gpt-4o-mini", poll_interval=0.02, max_poll_interval=0.05)


def frame(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"word": [f"w{i}" for i in range(start, start + n)]},
                        index=[f"r{i}" for i in range(start, start + n)])


def counts(out) -> dict:
    c = out.attrs["pdbatch"]["counts"]
    return {k: c[k] for k in ("rows", "sent", "cached", "resumed", "succeeded", "failed", "skipped")}


def test_a_new_job_sends_every_row_and_a_rerun_sends_none(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine)
    df = frame(5)
    df.loc["r4", "word"] = None  # not sent: skipped
    first = df.llm.map("say {word}", client=make_client(srv), progress=False, **FAST)
    assert counts(first) == dict(rows=5, sent=4, cached=0, resumed=0, succeeded=4, failed=0, skipped=1)
    again = df.llm.map("say {word}", client=make_client(srv), progress=False, **FAST)
    assert again.attrs["pdbatch"]["job_id"] == first.attrs["pdbatch"]["job_id"]
    assert counts(again) == dict(rows=5, sent=0, cached=4, resumed=0, succeeded=4, failed=0, skipped=1)
    assert engine.calls == 4 and srv.stats.batches_created == 1


def test_rows_answered_by_another_job_are_cached_not_sent(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine)
    frame(4).llm.map("say {word}", client=make_client(srv), progress=False, **FAST)
    out = frame(6).llm.map("say {word}", client=make_client(srv), progress=False, **FAST)  # 4 old rows, 2 new
    assert counts(out) == dict(rows=6, sent=2, cached=4, resumed=0, succeeded=6, failed=0, skipped=0)
    assert engine.calls == 6


def test_a_job_picked_up_in_flight_is_resumed_not_sent(make_server, make_client):
    srv = make_server(faults=Faults(request_delay=0.05))
    df = frame(4)
    job = df.llm.map("say {word}", client=make_client(srv), wait=False, **FAST)
    assert job.requests_sent == 4
    # The same map run again (a restarted kernel) re-attaches to the batch in flight.
    out = df.llm.map("say {word}", client=make_client(srv), progress=False, timeout=30, **FAST)
    assert out.attrs["pdbatch"]["job_id"] == job.id
    c = counts(out)
    assert c["sent"] == 0 and c["resumed"] + c["cached"] == 4 and c["succeeded"] == 4
    assert srv.stats.batches_created == 1
    loaded = pdbatch.Job.load(job.id, client=make_client(srv)).wait(progress=False, timeout=30).result()
    assert counts(loaded) == dict(rows=4, sent=0, cached=4, resumed=0, succeeded=4, failed=0, skipped=0)


def test_realtime_counts_the_rows_it_sent(make_server, make_client):
    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine)
    df = frame(3)
    out = df.llm.map("say {word}", client=make_client(srv), backend="realtime", progress=False, model="m")
    assert counts(out) == dict(rows=3, sent=3, cached=0, resumed=0, succeeded=3, failed=0, skipped=0)
    again = df.llm.map("say {word}", client=make_client(srv), backend="realtime", progress=False, model="m")
    assert counts(again) == dict(rows=3, sent=0, cached=3, resumed=0, succeeded=3, failed=0, skipped=0)
    assert engine.calls == 3


def test_batch_progress_does_not_count_cached_rows_as_completed(make_server, make_client):
    from pdbatch.errors import EngineError

    def reply(text, body):
        if text == "say w5":
            raise EngineError(500, "server_error", "this row fails")
        return text

    srv = make_server(engine=ScriptedEngine(reply))
    frame(4).llm.map("say {word}", client=make_client(srv), progress=False, **FAST)
    job = frame(6).llm.submit("say {word}", client=make_client(srv), max_retries=0, **FAST)
    job.wait(progress=False, timeout=30)
    st = job.status()  # of the 2 requests sent: 1 answered, 1 failed (the 4 cached rows were not sent)
    assert (st["total"], st["completed"], st["failed"], st["cached"]) == (2, 1, 1, 4)
    c = counts(job.result())
    assert c == dict(rows=6, sent=2, cached=4, resumed=0, succeeded=5, failed=1, skipped=0)

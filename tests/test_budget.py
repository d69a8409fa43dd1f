"""Flex processing (``service_tier="flex"``) and the budget cap (``max_cost=``).

Through the real ``openai`` SDK over HTTP against the project's own server
(tests/conftest.py); prices for its models are set with
:func:`pdbatch.pricing.set_price` (the server is not OpenAI's API, so it has
no default price). No mocks.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

import pdbatch  # noqa: F401  (registers .llm)
from pdbatch import pricing
from pdbatch.backends.realtime import Realtime
from pdbatch.cli import main
from pdbatch.core.records import Usage
from pdbatch.errors import BudgetError, OptionError
from pdbatch.server import Faults
from pdbatch.server.engines import EngineError, ScriptedEngine

MODEL = "toy-model"


@pytest.fixture
def priced():
    """``MODEL`` costs $1 per output token and nothing per input token; gpt-4o-mini at its usual price."""
    pricing.set_price(MODEL, input=0.0, output=1_000_000.0)
    pricing.set_price("gpt-4o-mini", input=0.15, cached_input=0.075, output=0.60)
    yield
    pricing.reset_prices()


def words(n: int) -> pd.DataFrame:
    return pd.DataFrame({"w": [f"w{i}" for i in range(n)]}, index=[f"r{i}" for i in range(n)])


def nothing_sent(srv) -> None:
    assert srv.stats.log == [] and srv.stats.uploads == 0 and srv.stats.batches_created == 0
    assert srv.stats.realtime_calls == 0 and len(pdbatch.jobs()) == 0


def rt(client, **kw) -> Realtime:
    return Realtime(client, backoff=0.01, max_backoff=0.05, **kw)


# ------------------------------------------------------------------ max_cost before sending
@pytest.mark.parametrize("backend", ["batch", "realtime"])
def test_max_cost_refuses_an_estimate_over_it_before_any_upload(make_server, make_client, priced, backend):
    srv = make_server()
    frame = words(50)
    est = frame.llm.estimate("say {w}", model="gpt-4o-mini", max_completion_tokens=100, show=False)
    with pytest.raises(BudgetError) as info:
        frame.llm.map("say {w}", model="gpt-4o-mini", max_completion_tokens=100, max_cost=0.0001,
                      backend=backend, client=make_client(srv), progress=False)
    text = str(info.value)
    assert "max_cost=$0.0001 " in text and "Nothing was sent" in text
    total = est["cost_batch" if backend == "batch" else "cost_realtime"]["total"]
    assert pricing.format_cost({"total": total}) in text  # names the estimate
    assert isinstance(info.value, OptionError)
    nothing_sent(srv)
    # under the cap, the same map runs
    out = frame.llm.map("say {w}", model="gpt-4o-mini", max_completion_tokens=100, max_cost=total * 1.01,
                        backend=backend, client=make_client(srv), progress=False, poll_interval=0.02) \
        if backend == "batch" else frame.llm.map("say {w}", model="gpt-4o-mini", max_completion_tokens=100,
                                                 max_cost=total * 1.01, backend=backend, client=make_client(srv),
                                                 progress=False)
    assert out.attrs["pdbatch"]["counts"]["succeeded"] == 50


def test_max_cost_with_an_unknown_price_is_refused(make_server, make_client):
    srv = make_server()
    with pytest.raises(BudgetError) as info:
        words(3).llm.map("{w}", model="gpt-4o-mini", max_completion_tokens=5, max_cost=1.0,
                         client=make_client(srv), progress=False)
    assert "cannot be checked" in str(info.value) and "set_price" in str(info.value)
    nothing_sent(srv)


def test_max_cost_on_batch_needs_an_output_cap(make_server, make_client, priced):
    srv = make_server()
    with pytest.raises(BudgetError) as info:
        words(3).llm.map("{w}", model="gpt-4o-mini", max_cost=1.0, client=make_client(srv), progress=False)
    assert "max_completion_tokens=" in str(info.value)
    nothing_sent(srv)


@pytest.mark.parametrize("value", [0, -1, "1", True, float("nan")])
def test_max_cost_must_be_a_positive_amount(make_server, make_client, value):
    srv = make_server()
    with pytest.raises(OptionError, match="max_cost must be an amount in US dollars > 0"):
        words(2).llm.map("{w}", model="m", max_cost=value, client=make_client(srv), progress=False)
    with pytest.raises(OptionError, match="max_cost must be"):
        words(2).llm.embed("{w}", max_cost=value, client=make_client(srv), progress=False)
    nothing_sent(srv)


def test_embed_max_cost_refuses_before_upload(make_server, make_client):
    srv = make_server()
    pricing.set_price("text-embedding-3-small", input=1_000_000.0)  # $1 a token
    try:
        with pytest.raises(BudgetError, match="over the cap"):
            words(10).llm.embed("{w}", max_cost=1.0, client=make_client(srv), progress=False)
    finally:
        pricing.reset_prices()
    nothing_sent(srv)


# ------------------------------------------------------------------ max_cost while sending (realtime)
def test_realtime_stops_at_max_cost_keeps_answers_and_resumes_with_a_higher_cap(make_server, make_client, priced):
    """Each answer costs $3 (three output words at $1); the cap of $10 stops the run after about four rows."""
    srv = make_server(faults=Faults(realtime_latency=0.02))
    frame = words(12)
    out = frame.llm.map("a b {w}", model=MODEL, max_cost=10.0, backend=rt(make_client(srv), max_concurrency=1),
                        progress=False, timeout=30)
    err = out["llm_error"]
    answered = err.isna()
    assert 4 <= answered.sum() <= 5  # the call in flight when the cap was reached is kept
    assert (out.loc[answered, "llm_output"] == [f"a b w{i}" for i in range(12)][:answered.sum()]).all()
    assert err[~answered].str.startswith("budget_exhausted").all() and "max_cost=$10" in err[~answered].iloc[0]
    assert srv.stats.realtime_calls == answered.sum()
    assert out.attrs["pdbatch"]["cost"]["total"] == pytest.approx(3.0 * answered.sum())
    summary = out.attrs["pdbatch"]["realtime"]
    assert summary["budget_exhausted"] and summary["max_cost"] == 10.0 and summary["spent"] >= 10.0
    # the same cap again: the job's spend is already over it, so nothing more is sent
    same = frame.llm.map("a b {w}", model=MODEL, max_cost=10.0, backend=rt(make_client(srv), max_concurrency=1),
                         progress=False, timeout=30)
    assert srv.stats.realtime_calls == answered.sum() and same["llm_error"].equals(err)
    # the same map with a higher cap sends the rest only
    again = frame.llm.map("a b {w}", model=MODEL, max_cost=100.0, backend=rt(make_client(srv), max_concurrency=1),
                          progress=False, timeout=30)
    assert again["llm_error"].isna().all() and srv.stats.realtime_calls == 12
    assert again.attrs["pdbatch"]["counts"]["sent"] == 12 - answered.sum()


# ------------------------------------------------------------------ flex
def test_flex_is_priced_at_the_batch_rate(make_server, make_client, priced, capsys):
    srv = make_server()
    frame = words(4)
    flex = frame.llm.map("{w}", model="gpt-4o-mini", service_tier="flex", backend=rt(make_client(srv)),
                         progress=False)
    plain = frame.llm.map("{w}", model="gpt-4o-mini", backend=rt(make_client(srv)), progress=False, cache=False)
    usage = Usage(flex.attrs["pdbatch"]["usage"]["input_tokens"], flex.attrs["pdbatch"]["usage"]["output_tokens"])
    assert flex.attrs["pdbatch"]["cost"]["batch"] is True
    assert flex.attrs["pdbatch"]["cost"]["total"] == pytest.approx(
        pricing.cost(usage, "gpt-4o-mini", batch=True)["total"])
    assert flex.attrs["pdbatch"]["cost"]["total"] == pytest.approx(plain.attrs["pdbatch"]["cost"]["total"] / 2)
    capsys.readouterr()
    assert main(["status", flex.attrs["pdbatch"]["job_id"], "--json"]) == 0  # pdbatch status prices it alike
    status = json.loads(capsys.readouterr().out)
    assert status["cost"]["batch"] is True and status["cost"]["total"] == pytest.approx(
        flex.attrs["pdbatch"]["cost"]["total"])
    # the pre-send check prices flex at the batch rate too
    est = frame.llm.estimate("{w}", model="gpt-4o-mini", max_completion_tokens=50, show=False)
    between = (est["cost_batch"]["total"] + est["cost_realtime"]["total"]) / 2
    frame.llm.map("{w}", model="gpt-4o-mini", service_tier="flex", max_completion_tokens=50, max_cost=between,
                  backend=rt(make_client(srv)), progress=False, cache=False)
    with pytest.raises(BudgetError, match="realtime prices"):
        frame.llm.map("{w}", model="gpt-4o-mini", max_completion_tokens=50, max_cost=between,
                      backend=rt(make_client(srv)), progress=False, cache=False)


def test_flex_resource_unavailable_is_retried_without_lowering_the_rate(make_server, make_client):
    refused = []

    def short_of_capacity(text, body):
        if body.get("service_tier") == "flex" and len(refused) < 3:
            refused.append(text)
            raise EngineError(429, "resource_unavailable", "Resource unavailable: flex capacity is short.")
        return text

    srv = make_server(engine=ScriptedEngine(short_of_capacity), faults=Faults(realtime_rpm=1000))
    backend = rt(make_client(srv), max_concurrency=2)
    out = words(6).llm.map("{w}", model="gpt-4o-mini", service_tier="flex", backend=backend, progress=False,
                           timeout=30)
    assert out["llm_error"].isna().all() and out["llm_output"].tolist() == [f"w{i}" for i in range(6)]
    counts = out.attrs["pdbatch"]["realtime"]
    assert counts["flex_unavailable"] == 3 and counts["429s"] == 0 and counts["retries"] == 3
    assert backend.limiter.pauses == 0 and backend.limiter.rpm == 1000  # no shared pause, the rate unchanged


def test_flex_calls_get_a_long_timeout(make_server, make_client):
    """A flex call outlives the client's short timeout (flex answers slowly); a standard call does not."""
    srv = make_server(faults=Faults(realtime_latency=0.6))
    client = make_client(srv, timeout=0.3)
    flex = words(1).llm.map("{w}", model="gpt-4o-mini", service_tier="flex", backend=rt(client, max_attempts=1),
                            progress=False, timeout=30)
    assert flex["llm_error"].isna().all() and flex["llm_output"].tolist() == ["w0"]
    plain = words(1).llm.map("{w}", model="gpt-4o-mini", backend=rt(client, max_attempts=1), progress=False,
                             timeout=30)
    assert plain["llm_error"].iloc[0].startswith("timeout")


def test_flex_is_for_the_realtime_backend(make_server, make_client):
    srv = make_server()
    with pytest.raises(OptionError, match="service_tier='flex' is for backend='realtime'"):
        words(2).llm.map("{w}", model="m", service_tier="flex", client=make_client(srv), progress=False)
    nothing_sent(srv)


# ------------------------------------------------------------------ CLI
def test_cli_max_cost_refuses_before_upload(batch_env, tmp_path, capsys, priced):
    src = tmp_path / "in.csv"
    words(20).to_csv(src, index=False)
    code = main(["map", str(src), "-t", "say {w}", "-m", "gpt-4o-mini", "--param", "max_completion_tokens=500",
                 "--max-cost", "0.000001", "--out", str(tmp_path / "out.parquet"), "-q"])
    assert code == 2
    assert "max_cost=$0.000001 refuses this map" in capsys.readouterr().err
    assert batch_env.stats.uploads == 0 and batch_env.stats.batches_created == 0
    assert main(["map", str(src), "-t", "say {w}", "-m", "gpt-4o-mini", "--max-cost", "-3",
                 "--out", str(tmp_path / "out.parquet"), "-q"]) == 2
    assert "--max-cost must be an amount in US dollars > 0" in capsys.readouterr().err
    assert main(["map", str(src), "-t", "say {w}", "-m", "gpt-4o-mini", "--endpoint", "responses",
                 "--param", "max_output_tokens=50", "--max-cost", "1", "--poll-interval", "0.02",
                 "--out", str(tmp_path / "out.parquet"), "-q"]) == 0
    assert pd.read_parquet(tmp_path / "out.parquet")["llm_output"].tolist()[:2] == ["say w0", "say w1"]


# ------------------------------------------------------------------ max_cost with an Anthropic client
CLAUDE = "claude-haiku-4-5"
COUNTED = ("POST", "/v1/messages/count_tokens")


@pytest.fixture
def make_anthropic():
    anthropic = pytest.importorskip("anthropic")
    made = []

    def factory(srv):
        made.append(anthropic.Anthropic(base_url=srv.base_url[: -len("/v1")], api_key="sk-ant-test", timeout=10.0,
                                        max_retries=0))
        return made[-1]

    yield factory
    for c in made:
        c.close()


@pytest.fixture
def claude_priced():
    """``CLAUDE`` on the local server: $1 per output token, input free (so only the output decides)."""
    pricing.set_price(CLAUDE, input=0.0, output=1_000_000.0)
    yield
    pricing.reset_prices()


def only_counted(srv) -> None:
    """Nothing but Anthropic's free count_tokens reached the server: no message, no batch, no job."""
    assert {(m, p) for m, p, _ in srv.stats.log} <= {COUNTED}
    assert srv.stats.batches_created == 0 and srv.stats.realtime_calls == 0 and len(pdbatch.jobs()) == 0


def test_anthropic_batch_max_cost_refuses_before_any_batch_and_never_pays_twice(make_server, make_anthropic,
                                                                                claude_priced):
    engine = ScriptedEngine(lambda text, body: text)
    srv = make_server(engine=engine)
    client = make_anthropic(srv)
    frame = words(6)
    opts = dict(model=CLAUDE, client=client, poll_interval=0.02, progress=False, timeout=30)
    with pytest.raises(BudgetError) as info:  # at most 10 output tokens a row at $1, half price: $30
        frame.llm.map("say {w}", max_tokens=10, max_cost=29.0, **opts)
    text = str(info.value)
    assert "max_cost=$29 refuses this map: its estimate is $30.00" in text and "the batch price" in text
    assert "Nothing was sent" in text
    only_counted(srv)  # the estimate's token count is Anthropic's (free) count_tokens; nothing else went out
    # without max_tokens the output is still bounded, by the 1024 pdbatch sends: the cap is checked against it
    with pytest.raises(BudgetError, match=r"its estimate is \$3,072.00"):
        frame.llm.map("say {w}", max_cost=100.0, **opts)
    only_counted(srv)
    out = frame.llm.map("say {w}", max_tokens=10, max_cost=30.0, **opts)
    assert out["llm_error"].isna().all() and srv.stats.batches_created == 1 and engine.calls == 6
    assert out.attrs["pdbatch"]["cost"]["total"] == pytest.approx(6 * 2 * 0.5)  # two words each, batch price
    again = frame.llm.map("say {w}", max_tokens=10, max_cost=30.0, **opts)  # the same map: answered from its job
    assert again["llm_output"].equals(out["llm_output"])
    assert srv.stats.batches_created == 1 and engine.calls == 6  # nothing paid twice


def test_anthropic_realtime_stops_at_max_cost_keeps_answers_and_resumes(make_server, make_anthropic, claude_priced):
    """Each answer costs $3 (three output words at $1); the cap of $10 stops the run after about four rows.

    Without ``max_tokens`` the pre-send check prices the input only (the realtime run stops at the cap itself),
    as for an unbounded OpenAI request; the run is AnthropicRealtime's ``messages.create`` calls.
    """
    srv = make_server(faults=Faults(realtime_latency=0.02))
    client = make_anthropic(srv)
    frame = words(12)
    opts = dict(model=CLAUDE, backend="realtime", client=client, max_concurrency=1, progress=False, timeout=30)
    out = frame.llm.map("a b {w}", max_cost=10.0, **opts)
    err = out["llm_error"]
    answered = err.isna()
    assert 4 <= answered.sum() <= 5  # the call in flight when the cap was reached is kept
    assert (out.loc[answered, "llm_output"] == [f"a b w{i}" for i in range(12)][:answered.sum()]).all()
    assert err[~answered].str.startswith("budget_exhausted").all() and "max_cost=$10" in err[~answered].iloc[0]
    assert srv.stats.calls("POST", "/v1/messages") == answered.sum()  # the rest were never sent
    assert out.attrs["pdbatch"]["cost"]["total"] == pytest.approx(3.0 * answered.sum())
    summary = out.attrs["pdbatch"]["realtime"]
    assert summary["budget_exhausted"] and summary["max_cost"] == 10.0 and summary["spent"] >= 10.0
    same = frame.llm.map("a b {w}", max_cost=10.0, **opts)  # the job's spend is already at the cap: nothing sent
    assert srv.stats.calls("POST", "/v1/messages") == answered.sum() and same["llm_error"].equals(err)
    more = frame.llm.map("a b {w}", max_cost=100.0, **opts)  # a higher cap sends the rest only
    assert more["llm_error"].isna().all() and srv.stats.calls("POST", "/v1/messages") == 12
    assert more.attrs["pdbatch"]["counts"]["sent"] == 12 - answered.sum()
    assert srv.stats.batches_created == 0


def test_anthropic_realtime_max_cost_with_max_tokens_refuses_before_any_call(make_server, make_anthropic,
                                                                           claude_priced):
    srv = make_server()
    with pytest.raises(BudgetError, match=r"its estimate is \$120.00 \(input and at most the output cap, 12 "
                                          r"requests on claude-haiku-4-5 at realtime prices\)"):
        words(12).llm.map("{w}", model=CLAUDE, max_tokens=10, max_cost=50.0, backend="realtime",
                          client=make_anthropic(srv), progress=False)
    only_counted(srv)


def test_anthropic_max_cost_without_a_price_is_refused(make_server, make_anthropic):
    """The local server is not api.anthropic.com: Claude's price table does not apply there."""
    srv = make_server()
    for backend in ("batch", "realtime"):
        with pytest.raises(BudgetError, match="cannot be checked"):
            words(3).llm.map("{w}", model=CLAUDE, max_tokens=5, max_cost=1.0, backend=backend,
                             client=make_anthropic(srv), progress=False)
    only_counted(srv)

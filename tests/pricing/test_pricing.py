"""Tests for pdbatch/pricing.py: the price table, overrides, cost arithmetic, token
counting, the cost in ``Job.result``'s summary and ``df.llm.estimate`` (which sends
nothing: the local server must see no call)."""

from __future__ import annotations

import json
import math
import os

import orjson
import pandas as pd
import pytest

import pdbatch
from pdbatch import pricing
from pdbatch.errors import MissingColumnError, OptionError
from pdbatch.pricing.prices import DEFAULT_PRICES, Price, cost, job_cost, price, set_price, token_counter
from pdbatch.core.records import Usage
from pdbatch.job.store import store_path

FAST = dict(poll_interval=0.02, max_poll_interval=0.1, progress=False, timeout=30)
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "gpt-5", "gpt-5-mini",
          "gpt-5-nano", "text-embedding-3-small", "text-embedding-3-large"]
SCHEMA = {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"],
          "additionalProperties": False}


@pytest.fixture(autouse=True)
def clean_prices(monkeypatch):
    """No override leaks between tests; counts are the documented heuristic unless a test says otherwise."""
    monkeypatch.delenv("PDBATCH_PRICES", raising=False)
    monkeypatch.setenv("PDBATCH_TOKENIZER", "heuristic")
    pricing.reset_prices()
    yield
    pricing.reset_prices()


def heuristic(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


def body_tokens(body: dict) -> int:
    """The documented rule, written out independently: 3 per request, 3 per message, text at ~4 chars/token."""
    n = 3
    for msg in body["messages"]:
        n += 3
        content = msg["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                n += heuristic(part["text"])
            else:
                n += 85 if part["image_url"].get("detail") == "low" else 765
    rf = body.get("response_format")
    if rf and rf["type"] == "json_schema":
        n += heuristic(orjson.dumps(rf["json_schema"]).decode())
    return n


@pytest.fixture
def cities():
    return pd.DataFrame({"city": ["Paris", None, "Lima", "Kyoto"], "lang": ["fr", "es", None, "ja"]},
                        index=["a", "b", "c", "d"])


# ------------------------------------------------------------------ the table
def test_table_covers_common_models_with_a_date():
    assert pricing.PRICES_AS_OF == "August 2025"
    for m in MODELS:
        p = price(m)
        assert isinstance(p, Price) and p.input > 0, m
        if not m.startswith("text-embedding"):
            assert p.output > p.input and p.cached_input is not None and p.cached_input < p.input, m
    assert price("gpt-4o-mini") == Price(0.15, 0.075, 0.60)
    assert price("text-embedding-3-small") == Price(0.02)


@pytest.mark.parametrize("dated, base", [
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"), ("gpt-4o-2024-08-06", "gpt-4o"), ("gpt-4.1-2025-04-14", "gpt-4.1"),
    ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"), ("o4-mini-2025-04-16", "o4-mini"), ("gpt-5-2025-08-07", "gpt-5"),
    ("gpt-5-mini-2025-08-07", "gpt-5-mini"), ("GPT-4o-Mini", "gpt-4o-mini"),
])
def test_dated_and_cased_names_map_to_their_base(dated, base):
    assert price(dated) == DEFAULT_PRICES[base]
    assert cost(Usage(10, 10), dated, batch=False)["priced_as"] == base


def test_a_snapshot_with_its_own_price_wins_over_its_base():
    assert price("gpt-4o-2024-05-13") != price("gpt-4o")
    assert cost(Usage(10), "gpt-4o-2024-05-13", batch=False)["priced_as"] == "gpt-4o-2024-05-13"


def test_unknown_models_have_no_price_and_a_note():
    for m in ("no-such-model", "ft:gpt-4o-mini-2024-07-18:org::abc", None, ""):
        assert price(m) is None
        assert cost(Usage(100, 10), m, batch=True) is None
    out = job_cost(Usage(100, 10), "no-such-model", "batch")
    assert out["cost"] is None and "set_price('no-such-model'" in out["cost_note"]
    assert "PDBATCH_PRICES" in out["cost_note"]


# ------------------------------------------------------------------ overrides
def test_set_price_overrides_and_reset_restores():
    set_price("gpt-4o-mini", input=1.0, cached_input=0.5, output=2.0)
    assert price("gpt-4o-mini-2024-07-18") == Price(1.0, 0.5, 2.0)
    assert cost(Usage(1_000_000), "gpt-4o-mini", batch=False)["source"] == "set_price"
    set_price("my-model", input=0.3)
    assert price("my-model") == Price(0.3, None, 0.0)
    pricing.reset_prices()
    assert price("gpt-4o-mini") == DEFAULT_PRICES["gpt-4o-mini"] and price("my-model") is None


@pytest.mark.parametrize("kw", [dict(input=-1), dict(input="1"), dict(input=1, output=float("nan")),
                                dict(input=True), dict(input=1, cached_input=-0.1)])
def test_set_price_rejects_bad_numbers(kw):
    with pytest.raises(OptionError, match="USD per 1M tokens"):
        set_price("m", **kw)


def test_prices_file_from_the_environment(tmp_path, monkeypatch):
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"gpt-4o-mini": {"input": 9, "output": 18}, "house-model": {"input": 1, "cached_input": 0.1,
                                                                                      "output": 4}}))
    monkeypatch.setenv("PDBATCH_PRICES", str(f))
    assert price("gpt-4o-mini-2024-07-18") == Price(9.0, None, 18.0)
    assert price("house-model") == Price(1.0, 0.1, 4.0)
    assert price("gpt-5") == DEFAULT_PRICES["gpt-5"]  # the table fills the gaps
    assert cost(Usage(10), "house-model", batch=True)["source"] == f"PDBATCH_PRICES={f}"
    set_price("house-model", input=2)  # set_price wins over the file
    assert price("house-model").input == 2.0
    f.write_text(json.dumps({"house-model": {"input": 5}}))  # an edited file is read again
    pricing.reset_prices()
    stat = f.stat()
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse clocks: make the change visible
    assert price("house-model") == Price(5.0)


@pytest.mark.parametrize("text, words", [
    ("{not json", ["PDBATCH_PRICES", "not a JSON file"]),
    ('["a"]', ["JSON object"]),
    ('{"m": {"output": 1}}', ["'m'", "input"]),
    ('{"m": {"input": 1, "outptu": 2}}', ["'m'"]),
    ('{"m": {"input": -1}}', ["input for 'm'"]),
])
def test_bad_prices_file_raises_naming_the_variable(tmp_path, monkeypatch, text, words):
    f = tmp_path / "p.json"
    f.write_text(text)
    monkeypatch.setenv("PDBATCH_PRICES", str(f))
    with pytest.raises(OptionError) as info:
        price("m")
    for w in words:
        assert w in str(info.value)
    out = job_cost(Usage(1, 1), "gpt-4o", "batch")  # never raises inside Job.result
    assert out["cost"] is None and "PDBATCH_PRICES" in out["cost_note"]


def test_missing_prices_file(monkeypatch, tmp_path):
    monkeypatch.setenv("PDBATCH_PRICES", str(tmp_path / "nope.json"))
    with pytest.raises(OptionError, match="cannot read the price file"):
        price("gpt-4o")


# ----------------------------------------------------------------- arithmetic
def test_cost_arithmetic_realtime_and_batch():
    u = Usage(1_000_000, 1_000_000, cached_tokens=400_000, reasoning_tokens=300_000)
    rt = cost(u, "gpt-4.1", batch=False)
    assert rt["input"] == pytest.approx(0.6 * 2.00)      # uncached part of the prompt
    assert rt["cached"] == pytest.approx(0.4 * 0.50)
    assert rt["output"] == pytest.approx(1.0 * 8.00)     # reasoning tokens are inside completion tokens
    assert rt["total"] == pytest.approx(1.2 + 0.2 + 8.0)
    bt = cost(u, "gpt-4.1", batch=True)
    for k in ("input", "cached", "output", "total"):
        assert bt[k] == pytest.approx(rt[k] / 2)
    assert bt["batch"] is True and rt["batch"] is False and bt["currency"] == "USD"
    assert bt["prices"] == {"input": 2.0, "cached_input": 0.5, "output": 8.0}


def test_cached_tokens_without_a_cached_price_cost_full_input():
    c = cost(Usage(1_000_000, 0, cached_tokens=1_000_000), "text-embedding-3-large", batch=True)
    assert c["cached"] == pytest.approx(0.065) and c["input"] == 0 and c["total"] == pytest.approx(0.065)


def test_local_backend_costs_nothing():
    c = cost(Usage(10**9, 10**9), "whatever.gguf", batch=False, local=True)
    assert c["total"] == 0 and c["source"].startswith("local")
    assert job_cost(Usage(10**6, 10**6), "gpt-4o", "local")["cost"]["total"] == 0
    assert "cost_note" not in job_cost(Usage(10**6, 10**6), "gpt-4o", "local", cached_rows=3)


def test_job_cost_by_backend():
    u = Usage(1_000_000, 1_000_000)
    assert job_cost(u, "gpt-4o-mini", "batch")["cost"]["total"] == pytest.approx((0.15 + 0.60) / 2)
    assert job_cost(u, "gpt-4o-mini", "realtime")["cost"]["total"] == pytest.approx(0.15 + 0.60)
    assert "answer cache" in job_cost(u, "gpt-4o-mini", "batch", cached_rows=2)["cost_note"]


def test_a_server_other_than_openais_has_no_default_price(make_server, make_client, cities):
    srv = make_server()
    out = cities.llm.map("Country of {city}?", model="gpt-4o-mini", client=make_client(srv), **FAST)
    info = out.attrs["pdbatch"]
    assert info["usage"]["input_tokens"] > 0 and info["cost"] is None
    assert info["cost_note"].startswith(f"no price known for model 'gpt-4o-mini' on {srv.base_url.rstrip('/')}")
    assert "set_price('gpt-4o-mini'" in info["cost_note"]


def test_result_summary_carries_the_cost(make_server, make_client, cities):
    srv = make_server()
    set_price("gpt-4o-mini", input=0.15, cached_input=0.075, output=0.6)  # the price of that server
    out = cities.llm.map("Country of {city}?", model="gpt-4o-mini", client=make_client(srv), **FAST)
    info = out.attrs["pdbatch"]
    u = info["usage"]
    assert u["input_tokens"] > 0 and u["output_tokens"] > 0
    expected = cost(Usage(u["input_tokens"], u["output_tokens"], u["cached_tokens"]), "gpt-4o-mini", batch=True)
    assert info["cost"] == expected and info["cost"]["batch"] is True and "cost_note" not in info
    again = pdbatch.Job.load(info["job_id"], client=make_client(srv)).result()
    assert again.attrs["pdbatch"]["cost"] == expected


def test_result_summary_unknown_model_has_a_note(make_server, make_client, cities):
    out = cities.llm.map("Country of {city}?", model="house-model-7", client=make_client(make_server()), **FAST)
    assert out.attrs["pdbatch"]["cost"] is None and "house-model-7" in out.attrs["pdbatch"]["cost_note"]


# -------------------------------------------------------------------- tokens
def test_heuristic_counter_is_documented_and_deterministic():
    c = token_counter("gpt-4o")
    assert c.name == "heuristic" and "4 characters per token" in c.note and not c.exact
    assert [c.count(t) for t in ("", "abc", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]


def test_default_counter_says_which_it_used(monkeypatch):
    monkeypatch.delenv("PDBATCH_TOKENIZER")
    for model, enc in (("gpt-4o-mini", "o200k_base"), ("gpt-5-nano", "o200k_base"), ("gpt-4.1", "o200k_base"),
                       ("text-embedding-3-small", "cl100k_base")):
        assert pricing.encoding_name(model) == enc
        c = token_counter(model)
        text = "Hello, world! Enrich this frame."
        if c.exact:  # the encoding file was available (cached or downloaded)
            assert c.name == f"tiktoken {enc}" and c.count(text) == len(c.encode(text))
        else:  # offline: the fallback, and the reason
            assert c.name == "heuristic" and f"could not load {enc}" in c.note and c.count(text) == heuristic(text)


# ------------------------------------------------------------------ estimate
def test_estimate_sends_nothing_and_matches_what_map_sends(make_server, make_client, cities, capsys):
    srv = make_server()
    kw = dict(model="gpt-4o-mini", system="Answer in {lang}.", max_completion_tokens=20, temperature=0)
    est = cities.llm.estimate("Country of {city}?", client=make_client(srv), backend="batch", wait=False,
                              progress=False, poll_interval=0.02, **kw)
    printed = capsys.readouterr().out
    assert srv.stats.log == [] and srv.stats.uploads == 0  # not a single HTTP call
    assert pdbatch.jobs().empty
    assert est["rows"] == 4 and est["requests"] == 2 and est["skipped"] == 2 and est["cached"] == 0
    assert est["skip_reasons"] == {"missing value in column 'city'": 1, "missing value in column 'lang'": 1}
    assert est["output_tokens"] == 40 and est["max_output_per_request"] == 20
    assert est["tokenizer"] == "heuristic" and est["images"] == 0
    assert printed.strip() == est["summary"] and "2 requests to send" in printed and "Nothing was sent" in printed

    client = make_client(srv)
    job = cities.llm.map("Country of {city}?", client=client, wait=False, **kw)
    sent_file = next(f for f in client.files.list() if f.purpose == "batch")
    lines = [json.loads(x) for x in client.files.content(sent_file.id).text.splitlines()]
    assert len(lines) == est["requests"] and srv.stats.uploads == 1
    assert est["input_tokens"] == sum(body_tokens(line["body"]) for line in lines)
    job.wait(progress=False, timeout=30)

    # The local server charges nothing OpenAI's price table knows of: its cost is unknown, not OpenAI's.
    assert est["cost_batch"] is None and est["cost_realtime"] is None
    assert f"no price known for model 'gpt-4o-mini' on {srv.base_url.rstrip('/')}" in est["summary"]
    openai_api = cities.llm.estimate("Country of {city}?", backend="batch", show=False, **kw)  # OpenAI's API
    assert openai_api["input_tokens"] == est["input_tokens"]
    u = Usage(est["input_tokens"], est["output_tokens"])
    assert openai_api["cost_batch"] == cost(u, "gpt-4o-mini", batch=True)
    assert openai_api["cost_realtime"]["total"] == pytest.approx(2 * openai_api["cost_batch"]["total"])
    assert openai_api["cost_covers"].startswith("input and")
    set_price("gpt-4o-mini", input=1.0, output=2.0)  # a price the user sets applies to any server
    priced = cities.llm.estimate("Country of {city}?", client=make_client(srv), cache=False, show=False, **kw)
    assert priced["cost_batch"] == cost(u, "gpt-4o-mini", batch=True) and priced["cost_batch"]["source"] == "set_price"


def test_estimate_counts_cached_answers_as_not_sent(make_server, make_client, cities):
    srv = make_server()
    cities.llm.map("Country of {city}?", model="gpt-4o-mini", client=make_client(srv), **FAST)
    calls = len(srv.stats.log)
    est = cities.llm.estimate("Country of {city}?", model="gpt-4o-mini", client=make_client(srv), show=False)
    assert (est["requests"], est["cached"], est["input_tokens"]) == (0, 3, 0)
    assert cities.llm.estimate("Country of {city}?", model="gpt-4o-mini", client=make_client(srv), cache=False,
                               show=False)["requests"] == 3
    # Another provider (here the environment's default API) is not answered by this server's answers.
    assert cities.llm.estimate("Country of {city}?", model="gpt-4o-mini", show=False)["cached"] == 0
    assert len(srv.stats.log) == calls


def test_estimate_creates_no_store(cities):
    cities.llm.estimate("Country of {city}?", model="gpt-4o-mini", show=False)
    assert not os.path.exists(store_path())


def test_estimate_without_output_cap_and_unknown_model(cities):
    est = cities.llm.estimate("Country of {city}?", model="house-model", show=False)
    assert est["output_tokens"] is None and est["cost_batch"] is None and est["cost_realtime"] is None
    assert "output tokens unknown" in est["summary"] and "set_price('house-model'" in est["summary"]
    set_price("house-model", input=1.0, output=4.0)
    est = cities.llm.estimate("Country of {city}?", model="house-model", show=False)
    assert est["cost_covers"] == "input only"
    assert est["cost_batch"]["total"] == pytest.approx(est["input_tokens"] * 1.0 / 1e6 / 2)


def test_estimate_images_and_schema(cities):
    df = cities.assign(img=["https://example.com/p.png", "https://example.com/b.png", None,
                            ["https://example.com/k1.png", "https://example.com/k2.png"]])
    low = df.llm.estimate("Country of {city}?", model="gpt-4o", images="img", image_detail="low", show=False)
    assert (low["requests"], low["images"], low["image_tokens"]) == (2, 3, 3 * pricing.IMAGE_TOKENS_LOW)
    auto = df.llm.estimate("Country of {city}?", model="gpt-4o", images="img", show=False)
    assert auto["image_tokens"] == 3 * pricing.IMAGE_TOKENS
    assert auto["input_tokens"] - low["input_tokens"] == 3 * (pricing.IMAGE_TOKENS - pricing.IMAGE_TOKENS_LOW)
    assert "3 image(s)" in auto["summary"]
    plain = df.llm.estimate("Country of {city}?", model="gpt-4o", show=False)
    schema = df.llm.estimate("Country of {city}?", model="gpt-4o", response_format=SCHEMA, show=False)
    per_request = schema["input_tokens"] - plain["input_tokens"]
    assert per_request > 0 and per_request % 3 == 0  # the schema counts once per request


def test_estimate_on_a_series(cities):
    est = cities["city"].llm.estimate("Country of {}?", model="gpt-5-mini", max_completion_tokens=8, show=False)
    assert est["requests"] == 3 and est["output_tokens"] == 3 * 8


@pytest.mark.parametrize("kw, err, word", [
    (dict(temprature=0), OptionError, "'temprature'"),
    (dict(overwrite="yes"), OptionError, "overwrite"),
    (dict(system="{nope}"), MissingColumnError, "nope"),
    (dict(n=2), OptionError, "n must be 1"),
])
def test_estimate_rejects_what_map_rejects(make_server, make_client, cities, kw, err, word):
    srv = make_server()
    with pytest.raises(err, match=word):
        cities.llm.estimate("Country of {city}?", model="gpt-4o-mini", client=make_client(srv), **kw)
    with pytest.raises(err, match=word):
        cities.llm.map("Country of {city}?", model="gpt-4o-mini", client=make_client(srv), **kw)
    assert srv.stats.log == []


def test_claude_prices_apply_on_anthropics_api_at_half_for_batches():
    from pdbatch.backends.anthropic import anthropic_provider

    assert price("claude-haiku-4-5-20251001") == Price(1.0, 0.1, 5.0)  # a dated snapshot: its alias's price
    c = job_cost(Usage(2_000_000, 1_000_000), "claude-sonnet-4-5", "batch", provider=anthropic_provider())["cost"]
    assert c["total"] == pytest.approx(0.5 * (2 * 3.0 + 15.0)) and c["source"].startswith("Anthropic pricing page")
    local = job_cost(Usage(10, 10), "claude-sonnet-4-5", "batch", provider="anthropic http://127.0.0.1:9")
    assert local["cost"] is None  # another server: unknown unless set_price names it

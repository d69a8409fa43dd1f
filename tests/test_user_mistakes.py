"""Small mistakes a user hit (issue 11 §6), each refused or explained with a message that says how to fix it.

* a URL (or any other non-client object) as ``client=`` is refused before
  anything is rendered or sent, naming ``openai.OpenAI(base_url=...)``;
* an unknown keyword suggests the closest of pdbatch's own arguments too
  (``output_column`` → ``output=``, ``modle`` → ``model=``);
* a ``map(timeout=...)`` that runs out names the job and how to pick it up
  (``pdbatch.Job.load('<id>')``), and that really picks it up;
* the doctests run on a temporary ``$PDBATCH_HOME``, never the user's store.

Everything goes through the real ``openai`` SDK over HTTP to the local
Batch API server (tests/conftest.py); nothing is mocked.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import openai
import pandas as pd
import pytest

import pdbatch
from pdbatch.errors import JobError, OptionError
from pdbatch.core.names import ARGUMENT_NAMES
from pdbatch.options import OPTIONS
from pdbatch.server import Faults

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def frame():
    return pd.DataFrame({"t": ["a", "b", "c"]}, index=["x", "y", "z"])


def nothing_sent(srv) -> None:
    """No HTTP call reached the server, and no job was started (so nothing was rendered)."""
    assert srv.stats.log == [] and srv.stats.uploads == 0 and srv.stats.batches_created == 0
    assert srv.stats.realtime_calls == 0
    assert len(pdbatch.jobs()) == 0


# ------------------------------------------------------------------ client=
@pytest.mark.parametrize("backend", [None, "batch", "realtime"])
def test_a_url_as_client_is_refused_naming_openai_OpenAI(make_server, frame, backend):
    srv = make_server()
    with pytest.raises(OptionError) as info:
        frame.llm.map("{t}", model="m", client=srv.base_url, backend=backend, progress=False)
    msg = str(info.value)
    assert "client must be an openai.OpenAI client" in msg and "the string" in msg
    assert f"client=openai.OpenAI(base_url={srv.base_url!r}, api_key=...)" in msg
    nothing_sent(srv)


@pytest.mark.parametrize("make_bad, words", [
    (lambda srv: {"base_url": srv.base_url}, ["got dict", "client=openai.OpenAI(base_url=..., api_key=...)"]),
    (lambda srv: 42, ["got int 42", "OPENAI_API_KEY"]),
    (lambda srv: openai.AsyncOpenAI(base_url=srv.base_url, api_key="k"),
     ["synchronous openai.OpenAI", "AsyncOpenAI", "client=openai.OpenAI(base_url=..., api_key=...)"]),
])
def test_other_non_clients_are_refused(make_server, frame, make_bad, words):
    srv = make_server()
    for call in (lambda c: frame.llm.map("{t}", model="m", client=c, progress=False),
                 lambda c: frame.llm.submit("{t}", model="m", client=c),
                 lambda c: frame.llm.embed("{t}", client=c, progress=False),
                 lambda c: frame.llm.estimate("{t}", model="m", client=c, show=False)):
        with pytest.raises(OptionError) as info:
            call(make_bad(srv))
        for w in words:
            assert w in str(info.value), str(info.value)
    nothing_sent(srv)


@pytest.mark.parametrize("make", [pdbatch.Batch, pdbatch.Realtime])
def test_a_backend_object_built_with_a_url_is_refused_too(make):
    with pytest.raises(OptionError, match=r"client must be an openai.OpenAI client.*openai.OpenAI\(base_url="):
        make("http://127.0.0.1:9/v1")


def test_a_real_client_still_works(make_server, make_client, frame):
    srv = make_server()
    out = frame.llm.map("{t}", model="m", client=make_client(srv), poll_interval=0.02, progress=False, timeout=30)
    assert out["llm_output"].tolist() == ["a", "b", "c"]


# ------------------------------------------------------------------ did you mean
@pytest.mark.parametrize("kwargs, words", [
    (dict(output_column="answer"), ["unknown option 'output_column'", "Did you mean output=?"]),
    (dict(modle="gpt-4o-mini"), ["unknown option 'modle'", "Did you mean model=?"]),
    (dict(error_colum="e"), ["Did you mean error_column=?"]),
    (dict(shard_sise=10), ["Did you mean shard_size=?"]),
    (dict(timout=5), ["Did you mean timeout=?"]),
    (dict(respons_format="json"), ["Did you mean response_format=?"]),
    (dict(temprature=0), ["Did you mean temperature=?", "extra_body={...}"]),
    (dict(zzzz=1), ["unknown option 'zzzz'.", "extra_body={...}"]),
])
def test_unknown_options_suggest_pdbatch_names_too(make_server, make_client, frame, kwargs, words):
    srv = make_server()
    with pytest.raises(OptionError) as info:
        frame.llm.map("{t}", model="m", client=make_client(srv), progress=False, **kwargs)
    for w in words:
        assert w in str(info.value), str(info.value)
    if "zzzz" in kwargs:
        assert "Did you mean" not in str(info.value)
    nothing_sent(srv)


def test_an_option_of_another_call_is_named_as_such_not_suggested_as_itself(make_server, make_client, frame):
    srv = make_server()
    with pytest.raises(OptionError) as info:
        frame.llm.submit("{t}", model="m", client=make_client(srv), progress=False)  # progress= belongs to map
    msg = str(info.value)
    assert "unknown option 'progress'" in msg and "progress= is an option of other pdbatch calls" in msg
    assert "Did you mean" not in msg
    nothing_sent(srv)


@pytest.mark.parametrize("method", ["map", "submit", "estimate", "embed"])
def test_every_keyword_of_the_accessor_is_a_suggestion(method):
    params = inspect.signature(getattr(pdbatch.LLMAccessor, method)).parameters
    keywords = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    body = {"dimensions", "encoding_format", "user"} if method == "embed" else set()
    assert keywords - body <= set(ARGUMENT_NAMES)


def test_every_option_is_a_suggestion():
    assert set(OPTIONS) <= set(ARGUMENT_NAMES)


# ------------------------------------------------------------------ timeout
def test_batch_timeout_names_the_job_and_how_to_pick_it_up(make_server, make_client, frame):
    srv = make_server(faults=Faults(request_delay=0.4))
    with pytest.raises(JobError) as info:
        frame.llm.map("{t}", model="m", client=make_client(srv), poll_interval=0.02, progress=False, timeout=0.2)
    job_id = pdbatch.jobs()["job_id"][0]
    msg = str(info.value)
    assert f"job {job_id} is still" in msg and "after 0.2 s" in msg
    assert f"pdbatch.Job.load('{job_id}').wait()" in msg and ".result()" in msg and "client=" in msg
    out = pdbatch.Job.load(job_id, client=make_client(srv)).wait(progress=False, timeout=30).result()
    assert out["llm_output"].tolist() == ["a", "b", "c"] and srv.stats.batches_created == 1


def test_realtime_timeout_names_the_job_and_how_to_pick_it_up(make_server, make_client):
    srv = make_server(faults=Faults(realtime_latency=0.25))
    df = pd.DataFrame({"w": [f"w{i}" for i in range(6)]})
    with pytest.raises(JobError) as info:
        df.llm.map("{w}", model="m", backend=pdbatch.Realtime(make_client(srv), max_concurrency=1),
                   progress=False, timeout=0.3)
    job_id = pdbatch.jobs()["job_id"][0]
    msg = str(info.value)
    assert f"job {job_id} stopped at its 0.3 s timeout" in msg and "answers are kept" in msg
    assert f"pdbatch.Job.load('{job_id}').wait()" in msg and ".result()" in msg
    sent = srv.stats.realtime_calls
    out = pdbatch.Job.load(job_id, client=make_client(srv)).wait(progress=False, timeout=30).result()
    assert out["llm_output"].tolist() == df["w"].tolist()
    assert srv.stats.realtime_calls == 6 and 1 <= sent < 6  # only the rest was sent


# ------------------------------------------------------------------ doctests
def test_doctests_use_a_temporary_job_store(tmp_path):
    """A doctest that runs a map (LLMAccessor.map's example) leaves the user's cache directory alone."""
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PDBATCH_HOME" and not k.startswith("PYTEST_")}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(cache),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    item = "pdbatch/accessor.py::pdbatch.accessor.LLMAccessor.map"
    done = subprocess.run([sys.executable, "-m", "pytest", item, "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
    assert list(cache.iterdir()) == []  # no pdbatch/ store under the user's cache

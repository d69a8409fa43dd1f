"""``ddf.llm`` on Dask: lazy graphs, one job per partition, a two-process LocalCluster, keys kept out of graphs.

One local Batch API server and one ``distributed.LocalCluster`` (two worker
processes, one thread each, on 127.0.0.1) serve the whole module. Workers
reach the server by its base URL and read the API key from an environment
variable of their own (``PDB_DASK_KEY``); every process of the module uses the
same job store (``PDBATCH_HOME``), as the README says a cluster must.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pickle
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import openai
import pandas as pd
import pytest

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402  (a dependency of distributed)

import pdbatch  # noqa: E402
from pdbatch.backends.pickling import ClientRecipe  # noqa: E402
from pdbatch.errors import BackendUnavailableError, BudgetError, ColumnCollisionError, DuplicateIdError, JobError, MissingColumnError, OptionError  # noqa: E402
from pdbatch.scale.partition import BackendRef  # noqa: E402
from pdbatch.server import BatchServer  # noqa: E402
from pdbatch.server.engines import echo_engine  # noqa: E402

KEY_ENV = "PDB_DASK_KEY"
KEY = "sk-dask-test-key-never-in-a-graph"
SCHEMA = {"title": "Tag", "type": "object", "properties": {
    "word": {"type": "string"}, "count": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dask-home"))


@pytest.fixture(autouse=True)
def same_home(shared_home, monkeypatch):
    """This process and the workers keep their jobs in one store (and the key is where the workers read it)."""
    monkeypatch.setenv("PDBATCH_HOME", shared_home)
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture(scope="module")
def srv():
    server = BatchServer(engine=echo_engine).start(timeout=5.0)
    yield server
    server.stop(timeout=3.0)


@pytest.fixture(scope="module")
def prices(shared_home):
    """A PDBATCH_PRICES file (the way every process of a cluster gets the same prices): $1 a token on "toy"."""
    path = os.path.join(shared_home, "prices.json")
    with open(path, "w") as fh:
        json.dump({"toy": {"input": 1_000_000.0, "output": 1_000_000.0}}, fh)
    return path


@pytest.fixture(scope="module")
def cluster(shared_home, prices):
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None,
                                  env={"PDBATCH_HOME": shared_home, KEY_ENV: KEY, "PDBATCH_PRICES": prices}) as lc:
        with distributed.Client(lc) as client:
            yield client


def frame(n: int, prefix: str = "r") -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{prefix} text {i}" for i in range(n)]}, index=[f"{prefix}{i:04d}" for i in range(n)])


def api_client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key=os.environ[KEY_ENV], max_retries=0, timeout=10.0)


def calls(srv) -> tuple:
    s = srv.stats
    return len(s.log), s.uploads, s.batches_created, s.requests_executed


# ------------------------------------------------------------------ on the cluster

def test_lazy_map_runs_each_partition_on_the_workers_and_a_rerun_pays_nothing(srv, cluster):
    pdf = frame(30)
    ddf = dd.from_pandas(pdf, npartitions=3)
    before = calls(srv)
    out = ddf.llm.map("{text}", model="m", response_format=SCHEMA, client=api_client(srv), poll_interval=0.05)
    assert calls(srv) == before  # nothing rendered or sent while building the graph
    assert list(out.columns) == ["text", "word", "count", "tags", "llm_error"]
    assert str(out.dtypes["count"]) == "Int64" and out.dtypes["tags"] == object
    assert KEY.encode() not in cloudpickle.dumps(dict(out.__dask_graph__()))

    with distributed.get_task_stream(client=cluster) as ts:
        got = out.compute()
    workers = {d["worker"] for d in ts.data if str(d["key"]).startswith("('pdbatch-map")}
    pids = cluster.run(os.getpid)
    assert workers and workers <= set(pids) and os.getpid() not in pids.values()  # ran in the worker processes
    assert got.index.tolist() == pdf.index.tolist()
    assert (got["word"] == got["text"]).all()  # each answer is its own row's (the engine echoes the text)
    assert got["llm_error"].isna().all() and (got["count"] == 0).all()
    assert got.dtypes.to_dict() == out.dtypes.to_dict()
    after = calls(srv)
    assert after[2] - before[2] == 3 and after[3] - before[3] == 30  # one batch per partition, each row once

    again = out.compute()  # the same graph: every partition re-attaches to its finished job
    assert calls(srv) == after  # zero calls: no upload, no batch, no poll
    pd.testing.assert_frame_equal(again, got)


def test_duplicate_ids_across_partitions_are_refused_before_anything_is_sent(srv, cluster):
    pdf = frame(8, "d")
    ddf = dd.concat([dd.from_pandas(pdf, npartitions=2, sort=False), dd.from_pandas(pdf, npartitions=2, sort=False)])
    assert not ddf.known_divisions
    before = calls(srv)
    out = ddf.llm.map("{text}", model="m", client=api_client(srv), poll_interval=0.05)
    with pytest.raises(DuplicateIdError, match=r"8 label\(s\) repeat \(partition 0 row 0 = partition 2 row 0"):
        out.compute()
    assert calls(srv) == before

    # Known, increasing divisions: no cross-partition step is added, and the map runs.
    known = dd.from_pandas(frame(8, "k"), npartitions=2)
    out = known.llm.map("{text}", model="m", client=api_client(srv), poll_interval=0.05)
    assert not any("pdbatch-id-hashes" in str(k) for k in dict(out.__dask_graph__()))
    assert out.compute()["llm_output"].tolist() == frame(8, "k")["text"].tolist()


def test_a_partition_dask_retries_reattaches_its_job_and_the_others_are_not_paid_again(srv, cluster):
    pdf = frame(12, "f")
    slow_row, seen = "f text 7", []
    lock = threading.Lock()

    def slow_once(body, url):  # the row's first answer takes longer than the partition's timeout
        text = body["messages"][-1]["content"]
        with lock:
            first = text == slow_row and slow_row not in seen
            seen.append(text)
        if first:
            time.sleep(2.0)
        return echo_engine(body, url)

    srv.engine = slow_once
    try:
        before = calls(srv)
        out = dd.from_pandas(pdf, npartitions=3).llm.map(
            "{text}", model="m", client=api_client(srv), poll_interval=0.05, timeout=1.0)
        got = out.compute(retries=3)
    finally:
        srv.engine = echo_engine
    story = cluster.story(*out.__dask_keys__())
    erred = {e[1] for e in story if e[0] == "scheduler" and str(e[-2]).startswith("task-erred")}
    assert erred  # a partition's task timed out at least once, and Dask ran it again
    assert got["llm_output"].tolist() == pdf["text"].tolist()
    after = calls(srv)
    assert after[2] - before[2] == 3 and after[3] - before[3] == 12  # no batch and no row paid twice
    assert seen.count(slow_row) == 1


def test_to_batch_file_writes_each_partitions_shards_with_the_pandas_lines(srv, cluster, tmp_path):
    pdf = frame(25, "w")
    ddf = dd.from_pandas(pdf, npartitions=3)
    paths = ddf.llm.to_batch_file(tmp_path / "req.jsonl", "{text}", model="gpt-4o-mini", shard_size=4)
    names = [os.path.basename(p) for p in paths]
    assert names[0] == "req-p00000-0000.jsonl" and all(n.startswith("req-p0000") for n in names)
    lines = [open(p, "rb").read().splitlines() for p in paths]
    assert max(len(x) for x in lines) == 4  # one partition in memory, cut into shards of shard_size
    one = pdf.llm.to_batch_file(tmp_path / "whole.jsonl", "{text}", model="gpt-4o-mini", shard_size=100)
    assert [line for x in lines for line in x] == open(one[0], "rb").read().splitlines()


def test_a_backend_object_travels_without_its_key_and_a_literal_key_is_refused(srv, cluster):
    backend = pdbatch.Batch(api_client(srv), poll_interval=0.05)
    blob = pickle.dumps(backend)
    assert KEY.encode() not in blob
    again = pickle.loads(blob)
    assert str(again.client.base_url) == str(backend.client.base_url) and again.provider == backend.provider
    out = dd.from_pandas(frame(6, "b"), npartitions=2).llm.map("{text}", model="m", backend=backend)
    assert KEY.encode() not in cloudpickle.dumps(dict(out.__dask_graph__()))
    assert out.compute()["llm_output"].tolist() == frame(6, "b")["text"].tolist()

    literal = openai.OpenAI(base_url=srv.base_url, api_key="sk-literal-not-in-env")
    before = calls(srv)
    with pytest.raises(OptionError, match="is in no environment variable, and a key is never put into a Dask graph"):
        dd.from_pandas(frame(4, "x"), npartitions=2).llm.map("{text}", model="m", client=literal)
    with pytest.raises(OptionError, match=r"Batch\(client=...\): the client's API key is in no environment"):
        pickle.dumps(pdbatch.Batch(literal))
    assert calls(srv) == before
    # On one machine (no pickling) such a backend is fine: the graph names it without pickling it.
    ref = BackendRef(pdbatch.Batch(literal))
    assert dask.base.tokenize(ref) == dask.base.tokenize(ref)


def test_max_cost_caps_the_whole_collection_and_shares_the_cap_across_partitions(srv, cluster, prices, monkeypatch):
    monkeypatch.setenv("PDBATCH_PRICES", prices)
    pdf = pd.DataFrame({"text": [" ".join(["word"] * (1 + 5 * (i // 4))) for i in range(12)]},
                       index=[f"c{i:03d}" for i in range(12)])
    ddf = dd.from_pandas(pdf, npartitions=3)  # 4 rows each, the later ones longer
    kw = dict(model="toy", max_completion_tokens=20, client=api_client(srv), poll_interval=0.05, name="capped")
    total = ddf.llm.estimate("{text}", show=False, **kw)["cost_batch"]["total"]
    parts = [pdf.iloc[k:k + 4].llm.estimate("{text}", show=False, **kw)["cost_batch"]["total"] for k in (0, 4, 8)]
    assert parts[0] < parts[1] < parts[2] and math.fsum(parts) == pytest.approx(total)

    before = calls(srv)
    with pytest.raises(BudgetError, match=r"max_cost=\$.* refuses this map: its estimate is .* Nothing was sent"):
        ddf.llm.map("{text}", max_cost=total * 0.9, **kw)
    out = ddf.llm.map("{text}", max_cost=total * 1.5, **kw)
    assert calls(srv) == before  # estimated at the call on the workers; nothing sent, still lazy
    got = out.compute()
    assert got["llm_output"].tolist() == pdf["text"].tolist()
    listed = pdbatch.jobs(limit=20)
    caps = {name: pdbatch.Job.load(job_id, client=kw["client"]).max_cost for job_id, name in zip(listed["job_id"], listed["name"])
            if name.startswith("capped [partition")}
    shares = [caps[f"capped [partition {k}]"] for k in range(3)]
    assert math.fsum(shares) <= total * 1.5  # the partitions' caps add up to at most the collection's
    for share, cost in zip(shares, parts):  # each gets its estimate's proportion of the cap
        assert share >= cost and share == pytest.approx(cost * 1.5)


def test_workers_count_tokens_as_this_process_does_without_trying_a_download(srv, shared_home, tmp_path):
    from pdbatch.pricing.tokens import LOAD_TIMEOUT, token_counter

    here = token_counter("gpt-4o-mini")
    if here.exact:
        pytest.skip("tiktoken's encoding loads in this process: nothing to fall back from")
    # Workers whose network hangs: every HTTPS request goes to a proxy that accepts and never answers.
    stall = socket.socket()
    stall.bind(("127.0.0.1", 0))
    stall.listen(8)
    proxy = f"http://127.0.0.1:{stall.getsockname()[1]}"
    env = {"PDBATCH_HOME": shared_home, "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy,
           "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache")}
    ddf = dd.from_pandas(frame(6, "t"), npartitions=2)
    try:
        with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1, host="127.0.0.1",
                                      dashboard_address=":0", env=env) as lc, \
                distributed.Client(lc, set_as_default=False) as client, dask.config.set(scheduler=client):
            client.submit(importlib.import_module, "pdbatch.scale.partition", pure=False).result(timeout=60)
            t0 = time.monotonic()  # the worker has imported pdbatch: what is left is the estimate itself
            est = ddf.llm.estimate("{text}", model="gpt-4o-mini", max_completion_tokens=3, show=False)
            took = time.monotonic() - t0
        stall.setblocking(False)
        with pytest.raises(BlockingIOError):
            stall.accept()  # no worker tried to fetch the encoding
    finally:
        stall.close()
    assert took < LOAD_TIMEOUT / 2
    assert (est["tokenizer"], est["tokenizer_note"]) == ("heuristic", here.note)  # the documented fallback
    assert est["input_tokens"] == frame(6, "t").llm.estimate("{text}", model="gpt-4o-mini", show=False)["input_tokens"]


# ------------------------------------------------------------------ in this process

def test_bad_options_raise_at_the_call_and_nothing_is_sent(srv):
    ddf = dd.from_pandas(frame(4, "o"), npartitions=2)
    before = calls(srv)
    cases = [
        (dict(wait=False), OptionError, "ddf.llm.map is lazy already"),
        (dict(max_cost=1.0), BudgetError, r"max_cost=\$1 cannot be checked: .*Nothing was sent"),
        (dict(response_format="json"), OptionError, "pass meta="),
        (dict(poll_intervl=1), OptionError, "Did you mean poll_interval="),
        (dict(poll_interval=-1), OptionError, "poll_interval must be a number of seconds > 0"),
        (dict(workers=2), OptionError, "workers= is an option of backend='local'"),
        (dict(output="text"), ColumnCollisionError, "'text'"),
    ]
    for extra, err, words in cases:
        with pytest.raises(err, match=words):
            ddf.llm.map("{text} json", model="m", client=api_client(srv), **extra)
    with pytest.raises(MissingColumnError, match="'nope'"):
        ddf.llm.map("{nope}", model="m", client=api_client(srv))
    with pytest.raises(OptionError, match="model= is required to write a batch file"):
        ddf.llm.to_batch_file(os.path.join(os.environ["PDBATCH_HOME"], "x.jsonl"), "{text}")
    with pytest.raises(OptionError, match=r"ddf.llm.embed\(\): got an unexpected keyword argument 'system'"):
        ddf.llm.embed("{text}", client=api_client(srv), system="s")
    assert calls(srv) == before


def test_json_mode_takes_meta_and_series_and_embeddings_get_their_meta(srv):
    ddf = dd.from_pandas(frame(6, "j"), npartitions=2)
    out = ddf.llm.map("{text} as json", model="m", response_format="json", client=api_client(srv),
                      poll_interval=0.05, meta={"text": "str", "echo": "str", "llm_error": "str"})
    got = out.compute(scheduler="sync")
    assert got["echo"].tolist() == [f"j text {i} as json" for i in range(6)]

    s = ddf["text"].llm.map("{}", model="m", client=api_client(srv), poll_interval=0.05)
    assert s.name == "llm_output" and s.compute(scheduler="sync").tolist() == frame(6, "j")["text"].tolist()

    e = ddf.llm.embed("{text}", client=api_client(srv), poll_interval=0.05, dimensions=3)
    assert list(e.columns) == ["text", "embedding", "llm_error"]
    vecs = e.compute(scheduler="sync")["embedding"]
    assert np.stack(vecs).shape == (6, 3) and vecs.iloc[0].dtype == np.float32


def test_estimate_adds_up_the_partitions(srv):
    pdf = pd.DataFrame({"text": ["a", None, "c", "d", "e"]}, index=range(5))
    est = dd.from_pandas(pdf, npartitions=2).llm.estimate("{text}", model="gpt-4o-mini", max_completion_tokens=5,
                                                          show=False, max_cost=1e-9, backend="batch")
    whole = pdf.llm.estimate("{text}", model="gpt-4o-mini", max_completion_tokens=5, show=False)
    assert est["partitions"] == 2
    assert {k: est[k] for k in ("rows", "requests", "skipped", "input_tokens", "output_tokens")} == \
        {k: whole[k] for k in ("rows", "requests", "skipped", "input_tokens", "output_tokens")}
    assert est["cost_batch"]["total"] == pytest.approx(whole["cost_batch"]["total"])
    assert "refuses this map" in est["max_cost_refusal"]


def test_a_worker_with_another_job_store_refuses_to_run(srv, tmp_path, monkeypatch):
    out = dd.from_pandas(frame(4, "h"), npartitions=2).llm.map("{text}", model="m", client=api_client(srv))
    monkeypatch.setenv("PDBATCH_HOME", str(tmp_path / "elsewhere"))
    before = calls(srv)
    with pytest.raises(JobError, match="set PDBATCH_HOME to the same shared directory on the workers"):
        out.compute(scheduler="sync")
    assert calls(srv) == before


def test_a_backend_built_without_a_client_reads_the_key_where_it_is_unpickled(srv, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-where-the-graph-is-built")
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    blob = pickle.dumps(pdbatch.Realtime(max_concurrency=2))
    assert b"sk-where-the-graph-is-built" not in blob
    monkeypatch.setenv("OPENAI_API_KEY", "sk-on-the-worker")  # the worker's own environment
    monkeypatch.delenv("OPENAI_BASE_URL")
    worker_side = pickle.loads(blob)
    assert worker_side.client.api_key == "sk-on-the-worker" and worker_side.max_concurrency == 2
    assert str(worker_side.client.base_url).rstrip("/") == srv.base_url.rstrip("/")  # the same server everywhere


def test_a_worker_without_the_key_variable_says_which_to_set(srv, monkeypatch):
    recipe = pickle.loads(pickle.dumps(ClientRecipe.of(api_client(srv))))
    assert recipe.key_env == KEY_ENV
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(BackendUnavailableError, match=f"{KEY_ENV} is not set in this worker process"):
        recipe.build()


_IMPORTS = """
import importlib.abc, sys

class NoDask(importlib.abc.MetaPathFinder):  # Dask not installed, as far as this process can tell
    def find_spec(self, name, *args):
        if name.split(".")[0] in ("dask", "distributed"):
            raise ImportError("no dask here")

blocker = NoDask()
sys.meta_path.insert(0, blocker)
import pdbatch
import pandas as pd
assert "dask" not in sys.modules and pd.DataFrame({"a": [1]}).llm is not None
try:
    import dask.dataframe
except ImportError:
    pass
else:
    raise AssertionError("the blocker let dask in")
sys.meta_path.remove(blocker)  # Dask installed after all: the first import of dask.dataframe registers ddf.llm
import dask.dataframe as dd
ddf = dd.from_pandas(pd.DataFrame({"a": [1]}), npartitions=1)
assert type(ddf.llm).__name__ == "DaskAccessor" and type(ddf["a"].llm).__name__ == "DaskAccessor"
pdbatch.scale.register_when_imported()  # dask.dataframe already imported: registers at once, again
assert type(ddf.llm).__name__ == "DaskAccessor"
print("ok")
"""


def test_import_pdbatch_registers_ddf_llm_without_importing_dask():
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-c", _IMPORTS], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]

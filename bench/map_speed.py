"""The whole round trip, cookbook loop vs ``df.llm.map``, against one local Batch API server.

Run (from the repository root)::

    python bench/map_speed.py [--rows 200000]     # (a)-(d) below
    python bench/map_speed.py --memory            # peak memory of map, 1,000,000 rows
    python bench/map_speed.py --profile --rows 20000   # cProfile of map, top entries
    python bench/map_speed.py --anthropic         # the Anthropic path (bench/anthropic_speed.py), 100,000 rows

One process, one run, one :class:`~pdbatch.server.BatchServer` on 127.0.0.1
whose engine answers every request at once with a schema-valid JSON object
(``{"categories": [...], "summary": "Summary of <title>."}``, so each answer
belongs to its row). The frame is synthetic (:func:`batchfile_speed.make_frame`);
the prompt, system message and JSON schema are the movie example of the
OpenAI batch-processing cookbook (see ``bench/batchfile_speed.py``).
Shards hold 50,000 requests; both flows poll every 0.05 s.

(a) **cookbook**: the cookbook's code, split into 50,000-request batches:
    ``iterrows`` → a dict per row → ``json.dumps`` per line → JSONL files →
    ``files.create`` → ``batches.create`` → ``batches.retrieve`` every 0.05 s
    until completed → ``files.content`` saved to disk → ``json.loads`` per
    line and of each answer → ``df.iloc[int(custom_id.split('-')[-1])]`` to
    find the row → new columns.
(b) **pdbatch**: ``df.llm.map(template, response_format=SCHEMA,
    backend=pdbatch.Batch(client, shard_size=50_000, poll_interval=0.05,
    max_poll_interval=0.05), progress=False, cache=False)`` on an empty job
    store (``PDBATCH_HOME`` is a fresh temporary directory).
(c) **re-run**: the same map once more, with ``cache=True`` (``cache=False``
    starts a finished job afresh, as documented); it re-attaches to the
    finished job. The API calls it made are counted on the server.
(d) **store cost**: bytes of the job store (``store.sqlite3`` and its WAL) and
    of the job directory per row, and the time the store spent writing and reading answers (``Store.cost``).

For (a) and (b): *wall* time; *server busy* time, the growth of
``srv.stats.busy_seconds`` (wall time during which the server was handling an
HTTP call or running a batch, overlaps counted once); and *client-side* time
= wall − server busy, the time the user waits on the client alone (client
work that overlaps server work is not in it; waiting out a poll interval
after a batch finished is). The ratio of client-side times is the figure the
project tracks (goal ≥ 10×). Both flows must produce the same answers: a
sample of rows is compared before anything is printed.

``--memory`` runs only (b), on 1,000,000 rows (20 shards) unless ``--rows``
says otherwise, and prints the peak resident memory of the ``map`` call over
``df.memory_usage(deep=True).sum()`` (goal ≤ 3×), and the same minus the RSS
before the frame was read. The peak is the kernel's ``VmHWM``, reset just
before ``map`` (``/proc/self/clear_refs``): reading the frame peaks higher
than it ends, and that peak is the user's read, not ``map``'s. The highest
``VmRSS`` sampled every 50 ms during ``map`` is printed beside it as a check,
and so is the peak of reading the frame (``VmHWM`` before the reset).
Where the reset is refused, the lifetime peak (``ru_maxrss``) is used and
the output says so. The frame is written to Parquet by a child process
and read back with ``pd.read_parquet``, as a user's data arrives. The server runs in a process of its own, so its
memory is not counted. Last, it prints the floor: the RSS of a fresh process
that imports the same libraries, reads the same frame and builds the output
``map`` returns for it (a list per row, the summaries, the error column),
without doing any of ``map``'s work. No ``map`` can peak below it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import cProfile
import gc
import json
import os
import pstats
import random
import resource
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import openai  # noqa: E402
import orjson  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

import pdbatch  # noqa: E402
from batchfile_speed import SCHEMA, SYSTEM, cookbook_tasks, make_frame  # noqa: E402
from pdbatch.job.store import Store, default_store, store_path  # noqa: E402
from pdbatch.server import BatchServer  # noqa: E402
from pdbatch.server.engines import chat_response, user_text  # noqa: E402

MODEL = "gpt-4o-mini"
TEMPLATE = "Title: {Series_Title}\n{Overview}"
SHARD = 50_000
POLL = 0.05
TIMEOUT = 3600.0  # bound on every wait


def engine(body: dict, url: str) -> dict:
    """Answer at once with a schema-valid object naming the row's title."""
    title = user_text(body).split("\n", 1)[0].removeprefix("Title: ")
    content = orjson.dumps({"categories": ["drama", "crime"], "summary": f"Summary of {title}."})
    return chat_response(content.decode(), model=body["model"], prompt_tokens=120, completion_tokens=20)


# --------------------------------------------------------------------------- (a) the cookbook

def wait_completed(client, batch_id: str):
    """``batches.retrieve`` every :data:`POLL` seconds until the batch is completed."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status == "completed":
            return batch
        if batch.status in ("failed", "expired", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"cookbook batch {batch_id} ended {batch.status}")
        time.sleep(POLL)


def cookbook_flow(df: pd.DataFrame, client, tmp: str) -> pd.DataFrame:
    tasks = cookbook_tasks(df, MODEL)
    batch_ids = []
    for k in range(0, len(tasks), SHARD):
        file_name = os.path.join(tmp, f"batch_tasks_movies-{k // SHARD}.jsonl")
        with open(file_name, "w") as file:
            for obj in tasks[k:k + SHARD]:
                file.write(json.dumps(obj) + "\n")
        with open(file_name, "rb") as fh:
            batch_file = client.files.create(file=fh, purpose="batch")
        batch_job = client.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
        batch_ids.append(batch_job.id)
    results, labels = [], []
    for n, batch_id in enumerate(batch_ids):
        batch_job = wait_completed(client, batch_id)
        assert batch_job.error_file_id is None
        result = client.files.content(batch_job.output_file_id).content
        result_file_name = os.path.join(tmp, f"batch_job_results_movies-{n}.jsonl")
        with open(result_file_name, "wb") as file:
            file.write(result)
        with open(result_file_name, "r") as file:
            for line in file:
                res = json.loads(line.strip())
                index = res["custom_id"].split("-")[-1]
                answer = json.loads(res["response"]["body"]["choices"][0]["message"]["content"])
                movie = df.iloc[int(index)]
                labels.append(movie.name)
                results.append({"Series_Title": movie["Series_Title"], **answer})
    return df.join(pd.DataFrame(results, index=labels)[["categories", "summary"]])


# --------------------------------------------------------------------------- (b) pdbatch

def pdbatch_flow(df: pd.DataFrame, client, cache: bool = False) -> pd.DataFrame:
    backend = pdbatch.Batch(client, shard_size=SHARD, poll_interval=POLL, max_poll_interval=POLL)  # as the cookbook polls
    return df.llm.map(TEMPLATE, model=MODEL, system=SYSTEM.replace("{", "{{").replace("}", "}}"),
                      response_format=SCHEMA, temperature=0.1, backend=backend, progress=False,
                      cache=cache, timeout=TIMEOUT)


# --------------------------------------------------------------------------- measuring

class ServerProcess:
    """A :class:`BatchServer` in a child process of its own, so that it and the client never share a GIL.

    ``stats()`` asks the child for ``(busy_seconds, batches_created, uploads, HTTP calls)``.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=self._serve, args=(child,), daemon=True)
        self._proc.start()
        self.base_url = self._conn.recv()

    @staticmethod
    def _serve(conn) -> None:
        with BatchServer(engine=engine) as srv:
            conn.send(srv.base_url)
            while conn.recv() == "stats":
                st = srv.stats
                conn.send((st.busy_seconds, st.batches_created, st.uploads, len(st.log)))

    def stats(self) -> tuple:
        self._conn.send("stats")
        return self._conn.recv()

    def client(self):
        return openai.OpenAI(base_url=self.base_url, api_key="bench", max_retries=2, timeout=600.0)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def measure(srv: ServerProcess, fn, *args):
    """``(result, wall s, server busy s, client CPU s)`` of ``fn(*args)``."""
    gc.collect()
    busy0, t0, cpu0 = srv.stats()[0], time.perf_counter(), time.process_time()
    out = fn(*args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return out, wall, srv.stats()[0] - busy0, cpu


def calls(srv: ServerProcess) -> tuple:
    return srv.stats()[1:]


def du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def check_same(cook: pd.DataFrame, ours: pd.DataFrame, n: int) -> None:
    """Same answers, row for row, on a sample (and no error at all on pdbatch's side)."""
    assert len(cook) == len(ours) == n and ours["llm_error"].isna().all()
    assert cook["summary"].notna().all() and ours["summary"].notna().all()
    sample = random.Random(11).sample(range(n), min(n, 2000))
    theirs, mine = cook.iloc[sample], ours.iloc[sample]
    assert theirs["summary"].tolist() == mine["summary"].tolist()
    assert [list(v) for v in theirs["categories"]] == [list(v) for v in mine["categories"]]
    assert ours["summary"].iloc[5] == f"Summary of {ours['Series_Title'].iloc[5]}."


def fresh_home() -> str:
    home = tempfile.mkdtemp(prefix="pdbatch-home-")
    os.environ["PDBATCH_HOME"] = home
    return home


def row(name: str, wall: float, busy: float, cpu: float) -> str:
    return f"{name:<16}{wall:9.2f} s {busy:12.2f} s {wall - busy:12.2f} s {cpu:12.2f} s"


def compare(n: int) -> None:
    df = make_frame(n)
    home, tmp = fresh_home(), tempfile.mkdtemp(prefix="pdbatch-cookbook-")
    try:
        with ServerProcess() as srv:
            client = srv.client()
            cook, c_wall, c_busy, c_cpu = measure(srv, cookbook_flow, df, client, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            ours, p_wall, p_busy, p_cpu = measure(srv, pdbatch_flow, df, client)
            check_same(cook, ours, n)
            del cook
            store_bytes = sum(os.path.getsize(store_path() + s) for s in ("", "-wal", "-shm")
                              if os.path.exists(store_path() + s))
            job_bytes = du(os.path.join(home, "jobs"))
            cost = dict(default_store().cost)
            before = calls(srv)
            again, r_wall, r_busy, _ = measure(srv, pdbatch_flow, df, client, True)
            after = calls(srv)
            assert again[["categories", "summary"]].equals(ours[["categories", "summary"]])
            fresh = Store(store_path())  # a new connection, as a restarted kernel reads the answers back
            fresh.answers(ours.attrs["pdbatch"]["job_id"])
            read = dict(fresh.cost)
            fresh.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)

    shards = -(-n // SHARD)
    print(f"rows: {n:,}   shards: {shards} x <= {SHARD:,}   poll: {POLL} s   answers: identical on a sample")
    print("the server runs in a process of its own; client CPU = CPU time of the client process")
    print(f"{'':<16}{'wall':>11} {'server busy':>14} {'client-side':>14} {'client CPU':>14}")
    print(row("(a) cookbook", c_wall, c_busy, c_cpu))
    print(row("(b) pdbatch map", p_wall, p_busy, p_cpu))
    c_client, p_client = c_wall - c_busy, p_wall - p_busy
    ratio = c_client / p_client if p_client > 0 else float("inf")
    print(f"client-side ratio cookbook / pdbatch: {ratio:.1f}x (wall - server busy)   "
          f"{c_cpu / p_cpu:.1f}x (client CPU)   (goal >= 10x)")
    print(f"    pdbatch per row: {p_client / n * 1e6:.1f} us client-side, {p_cpu / n * 1e6:.1f} us client CPU")
    print(f"(c) re-run (same map, cache=True): {r_wall:.2f} s wall, {r_busy:.3f} s server busy; "
          f"batches created {after[0] - before[0]}, uploads {after[1] - before[1]}, "
          f"HTTP calls {after[2] - before[2]}   (goal: 0 calls)")
    print(f"(d) job store: {store_bytes / 1e6:.1f} MB = {store_bytes / n:.0f} bytes/row   "
          f"(job directory: {job_bytes / 1e6:.1f} MB = {job_bytes / n:.0f} bytes/row)")
    if cost["written"]:
        print(f"    writing answers: {cost['write_seconds']:.2f} s = "
              f"{cost['write_seconds'] / cost['written'] * 1e6:.1f} us/row ({cost['written']:,} rows); "
              f"reading them back (a new connection): {read['read_seconds'] / max(read['read'], 1) * 1e6:.1f} us/row "
              f"({read['read']:,} rows)")


# --------------------------------------------------------------------------- --memory, --profile

def rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _write_frame(n: int, path: str) -> None:
    make_frame(n).to_parquet(path)


def reset_peak() -> bool:
    """Start ``VmHWM`` again from the current RSS (Linux 4.0+: ``5`` to ``/proc/self/clear_refs``); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return rss_kb("VmHWM") <= rss_kb("VmRSS") + 1024  # reset: the peak is now (about) the current RSS


def frame_from_parquet(n: int, tmp: str) -> pd.DataFrame:
    """The synthetic frame as a user has it: written to Parquet by another process, read back here.

    Building a million strings in this process would leave their garbage in
    its heap (freed, but not given back to the system) and count it as map's.
    """
    path = os.path.join(tmp, "frame.parquet")
    child = multiprocessing.get_context("spawn").Process(target=_write_frame, args=(n, path))
    child.start()
    child.join()
    df = pd.read_parquet(path)
    pa.default_memory_pool().release_unused()  # the reader's freed buffers, kept by Arrow's allocator
    return df


def _floor(path: str, conn) -> None:
    """In a fresh process: RSS after the imports, after reading the frame, and with the output ``map`` returns.

    The output is built as ``map`` builds it for :func:`engine`'s answers: a
    Python list per row for ``categories`` (its two words shared), the
    summaries in pandas' string dtype, an all-None error column, joined onto
    the frame without copying it. Nothing of ``map``'s own work is in it.
    """
    import numpy as np

    imported = rss_kb("VmRSS")
    df = pd.read_parquet(path)
    pa.default_memory_pool().release_unused()
    read = rss_kb("VmRSS")
    cats = np.empty(len(df), dtype=object)
    gc.disable()
    for i in range(len(df)):
        cats[i] = ["drama", "crime"]
    gc.enable()
    new = pd.DataFrame({"categories": cats,
                        "summary": pd.Series([f"Summary of {t}." for t in df["Series_Title"]], dtype="str"),
                        "llm_error": np.full(len(df), None, dtype=object)}, index=df.index)
    out = pd.concat([df, new], axis=1)
    gc.collect()
    pa.default_memory_pool().release_unused()  # what building the summaries freed, kept by Arrow's allocator
    conn.send((imported, read, rss_kb("VmRSS"), int(df.memory_usage(deep=True).sum()), len(out.columns)))


def floor(path: str) -> tuple:
    """``(RSS after imports, after the frame, with the output)`` in KiB, and the frame's size: what no map can go below."""
    ctx = multiprocessing.get_context("spawn")
    here, child = ctx.Pipe()
    proc = ctx.Process(target=_floor, args=(path, child))
    proc.start()
    got = here.recv()
    proc.join()
    return got


def memory(n: int) -> None:
    home = fresh_home()
    try:
        with ServerProcess() as srv:  # the server's memory is its own process's, not counted here
            client = srv.client()
            base_kb = rss_kb("VmRSS")
            df = frame_from_parquet(n, home)
            frame = int(df.memory_usage(deep=True).sum())
            gc.collect()
            start_kb = rss_kb("VmRSS")
            peak, stop = [start_kb], threading.Event()

            def sample() -> None:
                while not stop.wait(0.05):
                    peak[0] = max(peak[0], rss_kb("VmRSS"))

            sampler = threading.Thread(target=sample, daemon=True)
            before_kb = rss_kb("VmHWM")  # the peak so far: reading the frame
            reset = reset_peak()
            sampler.start()
            try:
                out, wall, busy, _cpu = measure(srv, pdbatch_flow, df, client)
            finally:
                stop.set()
                sampler.join(5)
            assert out["llm_error"].isna().all() and len(out) == n
        imported_kb, read_kb, output_kb, _size, _cols = floor(os.path.join(home, "frame.parquet"))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    hwm, sampled = rss_kb("VmHWM") * 1024, peak[0] * 1024
    top = max(hwm, sampled) if reset else max(maxrss, hwm, sampled)
    read_peak = before_kb * 1024
    print(f"rows: {n:,}   shards: {-(-n // SHARD)}   map: {wall:.1f} s wall, {busy:.1f} s server busy, "
          f"{wall - busy:.1f} s client-side")
    print(f"input frame (memory_usage deep): {frame / 1e6:.0f} MB   RSS before the frame: "
          f"{base_kb / 1024:.0f} MiB, before map: {start_kb / 1024:.0f} MiB")
    print(f"peak RSS during map: VmHWM {hwm / 2**20:.0f} MiB "
          f"({'reset before map' if reset else 'NOT reset (clear_refs refused): the lifetime peak'}), "
          f"sampled VmRSS max {sampled / 2**20:.0f} MiB; reading the frame peaked at {read_peak / 2**20:.0f} MiB")
    print(f"peak RSS / frame: {top / frame:.2f}x   (goal <= 3x; includes the interpreter "
          f"and libraries; the server runs in a process of its own)")
    print(f"(peak RSS - RSS before the frame) / frame: {(top - base_kb * 1024) / frame:.2f}x")
    print(f"floor, a fresh process holding only the imports ({imported_kb / 1024:.0f} MiB), the frame "
          f"(+{(read_kb - imported_kb) / 1024:.0f} MiB) and the output map returns (+{(output_kb - read_kb) / 1024:.0f} MiB): "
          f"{output_kb / 1024:.0f} MiB = {output_kb * 1024 / frame:.2f}x the frame")


def profile(n: int, top: int = 15) -> None:
    df = make_frame(n)
    home = fresh_home()
    try:
        with BatchServer(engine=engine) as srv:
            client = srv.client(max_retries=2, timeout=600.0)
            prof = cProfile.Profile()  # profiles this thread only: the server's threads are not in it
            t0 = time.perf_counter()
            prof.runcall(pdbatch_flow, df, client)
            print(f"rows: {n:,}   map under cProfile: {time.perf_counter() - t0:.2f} s")
            pstats.Stats(prof).sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(top)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=None, help="rows (default 200,000; 1,000,000 with --memory)")
    ap.add_argument("--memory", action="store_true", help="peak RSS of map over the frame's size")
    ap.add_argument("--profile", action="store_true", help="cProfile of map, top 15 cumulative")
    ap.add_argument("--anthropic", action="store_true",
                    help="the Anthropic path: a plain Message Batches loop vs map (bench/anthropic_speed.py)")
    args = ap.parse_args(argv)
    if args.anthropic:
        import anthropic_speed  # the same server process and measures, with the anthropic SDK

        anthropic_speed.main(["--rows", str(args.rows or 100_000)])
    elif args.memory:
        memory(args.rows or 1_000_000)
    elif args.profile:
        profile(args.rows or 20_000)
    else:
        compare(args.rows or 200_000)


if __name__ == "__main__":
    main()

"""``ddf.llm`` at scale: batch files from Parquet with bounded memory, and ``map`` across partitions.

Run (from the repository root)::

    python bench/dask_scale.py                                   # 10,000,000 rows to files; 1,000,000 rows mapped
    python bench/dask_scale.py --rows 2000000 --map-rows 200000  # a couple of minutes
    python bench/dask_scale.py --skip-map   /   --skip-files

(A) **to_batch_file**: ``--rows`` synthetic movie rows (the cookbook's prompt,
system message and schema, see ``bench/batchfile_speed.py``) are written to
Parquet on disk, ``--partition-rows`` per file, with a sorted ``id`` column
read back as the index (``read_parquet(index="id", calculate_divisions=True)``:
known divisions, so no id pass is needed). ``ddf.llm.to_batch_file`` then
writes every partition's JSONL shards on a ``LocalCluster`` of ``--workers``
processes (one thread each). Printed: each worker's peak resident memory
(``VmHWM``, reset just before the run) against one partition's size in memory
(``memory_usage(deep=True)``) and the whole frame's, rows/s and bytes written.
The goal: the peak is bounded by the partition, not the frame.

(B) **map**: ``--map-rows`` rows (Parquet, ``--map-partitions`` files) are
mapped against one local Batch API server (its own process, the engine of
``bench/map_speed.py``: instant schema-valid answers that name their row) and
the result written to Parquet, (1) by one process (``pd.read_parquet`` →
``df.llm.map`` → ``to_parquet``) and (2) by Dask on the cluster
(``dd.read_parquet`` → ``ddf.llm.map`` → ``to_parquet``), ``cache=False`` both
(no answer of (1) serves (2)). As in ``map_speed.py``, *client-side* time is
wall − server busy; the ratio one-process / Dask is printed, and every row's
answer is checked to name its own row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import pdbatch  # noqa: E402
from batchfile_speed import SCHEMA, SYSTEM, WORDS  # noqa: E402
from map_speed import MODEL, POLL, SHARD, TEMPLATE, ServerProcess, measure  # noqa: E402

MB = 1 << 20
LITERAL_SYSTEM = SYSTEM.replace("{", "{{").replace("}", "}}")  # its braces are text, not template fields


def chunk(start: int, n: int) -> pd.DataFrame:
    """Rows ``start`` .. ``start + n``: a unique title per row, overviews from a pool (quick to make)."""
    rng = np.random.default_rng(start)
    pool = np.array([" ".join(rng.choice(WORDS, 30)) + "." for _ in range(997)], dtype=object)
    ids = np.arange(start, start + n, dtype=np.int64)
    words = np.array(WORDS, dtype=object)
    titles = "Film " + pd.Series(ids).astype(str) + " " + pd.Series(words[ids % len(words)])
    return pd.DataFrame({"id": ids, "Series_Title": titles.to_numpy(dtype=object),
                         "Overview": pool[ids % len(pool)], "Released_Year": 1950 + ids % 70})


def write_parquet(directory: str, rows: int, per_file: int) -> int:
    """``rows`` rows as Parquet files of ``per_file`` rows; returns the number of files."""
    os.makedirs(directory, exist_ok=True)
    files = 0
    for start in range(0, rows, per_file):
        pq.write_table(pa.Table.from_pandas(chunk(start, min(per_file, rows - start)), preserve_index=False),
                       os.path.join(directory, f"part-{files:05d}.parquet"))
        files += 1
    return files


def _reset_peak() -> int:
    """Reset this process's peak RSS (``VmHWM``); return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _peak() -> int:
    return _status("VmHWM")


def _warm() -> None:
    import pdbatch  # noqa: F401  (the first task must not count the import)
    import pdbatch.scale.partition  # noqa: F401


def bench_files(client, dd, args, tmp: str) -> None:
    src = os.path.join(tmp, "frame")
    t0 = time.perf_counter()
    files = write_parquet(src, args.rows, args.partition_rows)
    print(f"(A) wrote {args.rows:,} rows to {files} Parquet files in {time.perf_counter() - t0:.1f} s")
    ddf = dd.read_parquet(src, index="id", calculate_divisions=True)
    part = ddf.get_partition(0).compute(scheduler="sync")  # here, not on a worker whose memory is measured
    part_mem = int(part.memory_usage(deep=True).sum())
    frame_mem = part_mem * ddf.npartitions
    del part
    out = os.path.join(tmp, "batch")
    os.makedirs(out)
    client.run(_warm)
    before = client.run(_reset_peak)
    t0 = time.perf_counter()
    paths = ddf.llm.to_batch_file(os.path.join(out, "requests.jsonl"), TEMPLATE, model=MODEL, system=LITERAL_SYSTEM,
                                  response_format=SCHEMA, temperature=0.1)
    wall = time.perf_counter() - t0
    peaks = client.run(_peak)
    size = sum(os.path.getsize(p) for p in paths)
    lines = 0
    for p in paths[:3]:
        with open(p, "rb") as f:
            lines += sum(1 for _ in f)
    print(f"    to_batch_file: {len(paths)} files, {size / MB:,.0f} MB, {wall:.1f} s wall, "
          f"{args.rows / wall:,.0f} rows/s on {len(peaks)} workers (first 3 files: {lines:,} lines)")
    print(f"    one partition in memory: {part_mem / MB:,.0f} MB ({args.partition_rows:,} rows); "
          f"the frame: {frame_mem / MB:,.0f} MB ({ddf.npartitions} partitions)")
    for w in sorted(peaks):
        print(f"    worker {w}: peak RSS {peaks[w] / MB:,.0f} MB (RSS before {before[w] / MB:,.0f} MB; "
              f"peak - before = {(peaks[w] - before[w]) / MB:,.0f} MB = "
              f"{(peaks[w] - before[w]) / part_mem:.1f}x one partition, {(peaks[w] - before[w]) / frame_mem:.2f}x the frame)")
    shutil.rmtree(out)
    shutil.rmtree(src)


def bench_map(client, dd, srv, args, tmp: str) -> None:
    src = os.path.join(tmp, "map")
    write_parquet(src, args.map_rows, -(-args.map_rows // args.map_partitions))
    api = srv.client()

    def one_process():
        df = pd.read_parquet(src).set_index("id")
        out = df.llm.map(TEMPLATE, model=MODEL, system=LITERAL_SYSTEM, response_format=SCHEMA, temperature=0.1,
                         backend=pdbatch.Batch(api, shard_size=SHARD, poll_interval=POLL, max_poll_interval=POLL),
                         progress=False, cache=False)
        out.to_parquet(os.path.join(tmp, "one.parquet"))

    def on_dask():
        ddf = dd.read_parquet(src, index="id", calculate_divisions=True)
        out = ddf.llm.map(TEMPLATE, model=MODEL, system=LITERAL_SYSTEM, response_format=SCHEMA, temperature=0.1,
                          backend=pdbatch.Batch(api, shard_size=SHARD, poll_interval=POLL, max_poll_interval=POLL),
                          cache=False)
        out.to_parquet(os.path.join(tmp, "dask-out"), schema=None)  # lists: an object column, typed by pyarrow per partition

    _, w1, b1, _ = measure(srv, one_process)
    _, w2, b2, _ = measure(srv, on_dask)
    got = pd.read_parquet(os.path.join(tmp, "dask-out"), columns=["Series_Title", "summary", "llm_error", "categories"])
    ok = (got["summary"] == "Summary of " + got["Series_Title"] + ".").all() and got["llm_error"].isna().all() \
        and got["categories"].map(list).map(len).eq(2).all()
    one = pd.read_parquet(os.path.join(tmp, "one.parquet"), columns=["summary"])
    assert ok and len(got) == args.map_rows and (one["summary"].sort_index() == got["summary"].sort_index()).all(), \
        "the Dask map's answers are not each row's own"
    print(f"(B) map of {args.map_rows:,} rows, {args.map_partitions} partitions on {len(client.nthreads())} workers "
          f"(every answer on its own row: checked)")
    print(f"    {'':<14}{'wall':>10} {'server busy':>13} {'client-side':>13}")
    print(f"    {'one process':<14}{w1:9.2f}s {b1:12.2f}s {w1 - b1:12.2f}s")
    print(f"    {'Dask':<14}{w2:9.2f}s {b2:12.2f}s {w2 - b2:12.2f}s")
    print(f"    client-side ratio one process / Dask: {(w1 - b1) / max(w2 - b2, 1e-9):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows written to batch files (A)")
    ap.add_argument("--partition-rows", type=int, default=500_000, help="rows per Parquet file / partition (A)")
    ap.add_argument("--map-rows", type=int, default=1_000_000, help="rows mapped (B)")
    ap.add_argument("--map-partitions", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-files", action="store_true")
    ap.add_argument("--skip-map", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pdbatch-dask-bench-")
    os.environ["PDBATCH_HOME"] = os.path.join(tmp, "home")  # one fresh job store for this process and the workers
    os.environ["OPENAI_API_KEY"] = "bench"  # the workers make the server's client again from this variable
    try:
        with ServerProcess() as srv:  # forked before any thread of the cluster exists
            import dask.dataframe as dd
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address=None, memory_limit=0) as cluster, Client(cluster) as client:
                if not args.skip_files:
                    bench_files(client, dd, args, tmp)
                if not args.skip_map:
                    bench_map(client, dd, srv, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

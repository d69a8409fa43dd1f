"""Lines per second of a batch on ``pdbatch serve``'s echo engine, beside the engine alone.

Run (from the repository root)::

    python bench/serve_speed.py [--lines 50000] [--repeat 3]
    python bench/serve_speed.py --upstream [--lines 1000] [--rpm 6000] [--latency 0.05] [--concurrency 16]

One process: the echo engine is first called directly on every request body
(the upper bound: no HTTP, no files, no state), then a
:class:`~pdbatch.server.BatchServer` (echo engine, durable state in a fresh
temporary ``data_dir``) runs the same requests as one batch through the
``openai`` SDK: upload, create, poll every 0.02 s until ``completed``. The
batch time runs from ``batches.create`` to the poll that sees it completed;
the output file is downloaded and its lines counted (every line exactly
once) before anything is printed. The figure is the best of ``--repeat``
runs; the ratio server/engine is the share of the engine's speed the server
keeps (validation, the worker loop, answers written and made durable as they
happen). On a shared machine wall times swing with the load, so the CPU time
of the process over the same span (``getrusage``: user + system, all threads:
the worker, the HTTP server answering polls, the client polling) is printed
too, as lines per CPU second. The upload of the input file (best of the
runs) is timed too: it is answered once its bytes and name are on the disk.

``--upstream`` measures ``pdbatch serve --upstream`` instead: a second local
server (echo engine, ``realtime_rpm`` requests per minute, ``--latency``
seconds per answer) is the upstream, and a server with the upstream engine
(``rpm`` set to the same limit, ``--concurrency`` calls at once) runs one
batch of ``--lines`` lines against it. The figure is the rate ratio
achieved/allowed: upstream calls per minute between the first and the last
call, over ``--rpm`` (the limiter paces at 97 % of it, so about 0.97 is the
ceiling); the 429s the upstream answered and the calls per line (1.00: no line
sent twice) are printed beside it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdbatch.server import BatchServer, Faults  # noqa: E402
from pdbatch.server.upstream import UpstreamEngine  # noqa: E402
from pdbatch.server.engines import echo_engine  # noqa: E402

URL = "/v1/chat/completions"


def make_lines(n: int) -> list[dict]:
    """``n`` chat requests of a few words each."""
    return [{"custom_id": f"row-{i}", "method": "POST", "url": URL,
             "body": {"model": "echo", "messages": [
                 {"role": "system", "content": "Summarise the movie in one line."},
                 {"role": "user", "content": f"Movie number {i}: a story of {i % 97} friends."}]}}
            for i in range(n)]


def cpu() -> float:
    """CPU seconds of this process so far (user + system, every thread)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def engine_alone(lines: list[dict]) -> tuple[float, float]:
    """Wall and CPU seconds the echo engine takes over every body, called directly."""
    start, start_cpu = time.perf_counter(), cpu()
    for line in lines:
        echo_engine(line["body"], URL)
    return time.perf_counter() - start, cpu() - start_cpu


def one_batch(lines: list[dict], engine=echo_engine, uploads: list | None = None) -> tuple[float, float]:
    """Wall and CPU seconds from ``batches.create`` until the batch is seen ``completed``.

    The wall seconds of the upload (file and directory fsync'd before it is
    answered) are appended to ``uploads`` when given.
    """
    payload = b"".join(orjson.dumps(x) + b"\n" for x in lines)
    with tempfile.TemporaryDirectory(prefix="pdbatch-serve-speed-") as tmp:
        with BatchServer(engine=engine, data_dir=tmp) as srv:
            client = srv.client(max_retries=0, timeout=60)
            began = time.perf_counter()
            up = client.files.create(file=("in.jsonl", payload), purpose="batch")
            if uploads is not None:
                uploads.append((time.perf_counter() - began, len(payload)))
            start, start_cpu = time.perf_counter(), cpu()
            batch = client.batches.create(input_file_id=up.id, endpoint=URL, completion_window="24h")
            for _ in range(30_000):  # at most 600 s
                batch = client.batches.retrieve(batch.id)
                if batch.status in ("completed", "failed", "expired", "cancelled"):
                    break
                time.sleep(0.02)
            took = time.perf_counter() - start, cpu() - start_cpu
            assert batch.status == "completed", batch
            out = client.files.content(batch.output_file_id).content.splitlines()
            ids = [orjson.loads(x)["custom_id"] for x in out]
            assert len(ids) == len(set(ids)) == len(lines), (len(ids), len(set(ids)))
            client.close()
    return took


class Stamped:
    """The echo engine, noting when each call is answered."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, body: dict, url: str) -> dict:
        self.stamps.append(time.monotonic())
        return echo_engine(body, url)


def upstream_ratio(n: int, rpm: float, latency: float, concurrency: int) -> None:
    """Print the rate ratio achieved/allowed of one ``n``-line batch through ``pdbatch serve --upstream``."""
    stamped = Stamped()
    with BatchServer(engine=stamped, faults=Faults(realtime_rpm=int(rpm), realtime_latency=latency)) as up:
        engine = UpstreamEngine(up.base_url, rpm=rpm, max_concurrency=concurrency)
        wall, _ = one_batch(make_lines(n), engine)
        engine.close()
        limited = sum(1 for _, _, status in up.stats.log if status == 429)
        calls = up.stats.realtime_calls
    span = stamped.stamps[-1] - stamped.stamps[0]
    achieved = (len(stamped.stamps) - 1) / span * 60 if span > 0 else float("inf")
    print(f"{n} lines through pdbatch serve --upstream (upstream: {rpm:g} rpm, {latency:g} s per answer; "
          f"{concurrency} calls at once)")
    print(f"  achieved {achieved:,.0f} rpm of {rpm:g} allowed: rate ratio {achieved / rpm:.3f}   "
          f"(batch {wall:.2f} s, {limited} 429s, {calls / n:.2f} upstream calls per line)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=None, help="default 50000 (1000 with --upstream)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--upstream", action="store_true", help="the upstream rate ratio instead")
    ap.add_argument("--rpm", type=float, default=6000.0, help="with --upstream: the upstream's limit")
    ap.add_argument("--latency", type=float, default=0.05, help="with --upstream: seconds per answer")
    ap.add_argument("--concurrency", type=int, default=16, help="with --upstream: calls at once")
    args = ap.parse_args()
    if args.upstream:
        return upstream_ratio(args.lines or 1000, args.rpm, args.latency, args.concurrency)
    args.lines = args.lines or 50_000
    lines = make_lines(args.lines)
    alone = [engine_alone(lines) for _ in range(args.repeat)]
    uploads: list = []
    served = [one_batch(lines, uploads=uploads) for _ in range(args.repeat)]
    n = args.lines
    a_wall, a_cpu = min(w for w, _ in alone), min(c for _, c in alone)
    s_wall, s_cpu = min(w for w, _ in served), min(c for _, c in served)
    print(f"{n} lines, echo engine, best of {args.repeat}")
    print(f"  engine alone   {n / a_wall:>10,.0f} lines/s   {n / a_cpu:>10,.0f} lines per CPU s")
    print(f"  pdbatch serve  {n / s_wall:>10,.0f} lines/s   {n / s_cpu:>10,.0f} lines per CPU s"
          f"   (batch {s_wall:.2f} s)")
    print(f"  ratio serve/engine {a_wall / s_wall:.2f} (wall), {a_cpu / s_cpu:.2f} (CPU)")
    up_wall, up_bytes = min(uploads)
    print(f"  upload of the input ({up_bytes / 1e6:.1f} MB, answered once on disk): {up_wall:.3f} s")


if __name__ == "__main__":
    main()

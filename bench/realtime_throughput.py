"""Does backend="realtime" use the rate it is allowed, and the concurrency it is given?

Against a local :class:`~pdbatch.server.BatchServer` (echo answers, no model):

* ``rate-bound``: the server allows R requests per W-second window
  (``Faults.realtime_rpm`` / ``rate_window``: a per-minute limit with time
  scaled down) and answers after L seconds; the backend is told ``rpm=R`` per
  ``rate_period=W`` and may keep C >> R*L/W calls in flight. Target: the
  achieved rate is at least 95 % of R/W.
* ``rate-learned``: the same server, but the backend is given no ``rpm``; it
  learns the limit from the ``x-ratelimit-*`` headers and 429s (reported, no
  target).
* ``concurrency-bound``: no server limit, L seconds per call, C calls in
  flight: the rate should be near C/L.

The achieved rate is measured on the server from the times the engine was
called, so that start-up and the last call's latency do not count: calls paced
by a rate limit are evenly spaced, so their rate is (n-1) / span; calls bound
by concurrency arrive in waves of C, one wave per L seconds, so their rate is
n / (span + L). The wall-clock rate (rows / seconds of ``map``, start-up and
the last latency included) is printed too.

Run ``python bench/realtime_throughput.py [scale]`` (scale 1 takes ~40 s);
it exits 1 when a target is missed.
"""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pandas as pd  # noqa: E402

import pdbatch  # noqa: E402,F401  (registers .llm)
from pdbatch.backends.realtime import Realtime  # noqa: E402
from pdbatch.server.engines import ScriptedEngine  # noqa: E402
from pdbatch.server import BatchServer, Faults  # noqa: E402


def run(rows: int, faults: Faults, waves: bool = False, **backend) -> dict:
    """Map ``rows`` rows through a fresh server; return rates and counts."""
    stamps: list = []
    lock = threading.Lock()

    def reply(text: str, body: dict) -> str:
        with lock:
            stamps.append(time.monotonic())
        return text

    with BatchServer(engine=ScriptedEngine(reply), faults=faults) as srv:
        client = srv.client(max_retries=0)
        df = pd.DataFrame({"w": [f"row {i}" for i in range(rows)]})
        be = Realtime(client, **backend)
        t0 = time.monotonic()
        out = df.llm.map("{w}", model="gpt-4o-mini", backend=be, progress=False, cache=False, timeout=120)
        wall = time.monotonic() - t0
        calls = srv.stats.realtime_calls
    assert out["llm_error"].isna().all(), out["llm_error"].dropna().head()
    stamps.sort()
    span = stamps[-1] - stamps[0]
    meta = out.attrs["pdbatch"]["realtime"]
    rate = len(stamps) / (span + faults.realtime_latency) if waves else (len(stamps) - 1) / span
    return {"rate": rate, "wall_rate": rows / wall,
            "seconds": wall, "calls": calls, "429s": meta["429s"], "retries": meta["retries"]}


def main(scale: float = 1.0) -> int:
    window, r_per_window, latency, wide = 2.0, 40, 0.2, 64
    windows = max(2, round(6 * scale))
    target = r_per_window / window
    ok = True
    print(f"server limit: {r_per_window} requests per {window:g} s window = {target:g}/s; latency {latency:g} s")
    res = run(r_per_window * windows, Faults(realtime_rpm=r_per_window, rate_window=window, realtime_latency=latency),
              max_concurrency=wide, rpm=r_per_window, rate_period=window)
    ratio = res["rate"] / target
    ok &= ratio >= 0.95
    print(f"rate-bound        (rpm={r_per_window} per {window:g} s, C={wide}): {res['rate']:.2f}/s = "
          f"{ratio:.3f} of R  (wall {res['wall_rate']:.2f}/s = {res['wall_rate'] / target:.3f}, "
          f"{res['seconds']:.1f} s, 429s={res['429s']})")
    res = run(r_per_window * windows, Faults(realtime_rpm=r_per_window, rate_window=window, realtime_latency=latency),
              max_concurrency=wide, rate_period=window)
    print(f"rate-learned      (no rpm given,        C={wide}): {res['rate']:.2f}/s = {res['rate'] / target:.3f} "
          f"of R  (wall {res['wall_rate']:.2f}/s, {res['seconds']:.1f} s, 429s={res['429s']}, "
          f"retries={res['retries']})")
    conc, slow = 8, 0.5
    rows = max(2 * conc, round(conc / slow * 10 * scale))
    res = run(rows, Faults(realtime_latency=slow), waves=True, max_concurrency=conc, rpm=1_000_000)
    ratio = res["rate"] / (conc / slow)
    ok &= ratio >= 0.9
    print(f"concurrency-bound (C={conc}, L={slow:g} s, rpm high):      {res['rate']:.2f}/s = {ratio:.3f} of C/L "
          f"(wall {res['wall_rate']:.2f}/s = {res['wall_rate'] / (conc / slow):.3f}, {res['seconds']:.1f} s)")
    print("OK" if ok else "BELOW TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0))

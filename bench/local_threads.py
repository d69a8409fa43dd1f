"""Which pool layout answers short prompts faster on this machine?

Compares, on the same short prompts (answers capped at the same length):

* ``2x1``: a pool of two model instances with one thread each, fed by two
  Python threads (llama.cpp releases the GIL while it computes);
* ``1x2``: one instance with two threads, fed by one Python thread.

Run ``python bench/local_threads.py [rows] [max_tokens] [rounds]``; it prints
the median rows/s of each layout (rounds interleaved) and their ratio. The faster one is pdbatch's default
(``pdbatch.local_model.model.DEFAULT_THREADS_PER_WORKER``).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pdbatch.local_model.model import ModelPool, default_model_path  # noqa: E402

CITIES = ["Paris", "Lima", "Tokyo", "Cairo", "Oslo", "Quito", "Delhi", "Accra", "Hanoi", "Bern", "Rome", "Perth"]


def bodies(rows: int, max_tokens: int) -> list:
    return [
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"In one sentence, what is {CITIES[i % len(CITIES)]} known for?"}],
            "max_completion_tokens": max_tokens,
            "temperature": 0,
        }
        for i in range(rows)
    ]


def run(pool: ModelPool, work: list) -> tuple:
    """Answer ``work`` with one Python thread per pool instance; return (seconds, completion tokens)."""
    todo = list(work)
    lock = threading.Lock()
    tokens = [0]

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                body = todo.pop()
            out = pool.complete(body)
            with lock:
                tokens[0] += out["usage"]["completion_tokens"]

    threads = [threading.Thread(target=worker) for _ in range(pool.workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, tokens[0]


def main(rows: int = 12, max_tokens: int = 48, rounds: int = 3) -> None:
    path = default_model_path()
    work = bodies(rows, max_tokens)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"model {os.path.basename(path)}, {rows} prompts, max_tokens={max_tokens}, {cores} cores, {rounds} rounds")
    layouts = {"2x1": ModelPool(path, workers=2, threads_per_worker=1), "1x2": ModelPool(path, workers=1, threads_per_worker=2)}
    for pool in layouts.values():  # warm up: first calls pay one-off costs
        pool.complete(work[0])
    times: dict = {name: [] for name in layouts}
    tokens: dict = {}
    for _ in range(rounds):  # interleaved, so that a busy moment hurts both layouts alike
        for name, pool in layouts.items():
            secs, tokens[name] = run(pool, work)
            times[name].append(secs)
    rates = {}
    for name, pool in layouts.items():
        secs = statistics.median(times[name])
        rates[name] = rows / secs
        print(f"{name}: {pool.workers} instance(s) x {pool.threads_per_worker} thread(s): "
              f"median {secs:5.2f} s of {rounds}, {rates[name]:5.2f} rows/s, {tokens[name] / secs:6.1f} tokens/s")
    print(f"ratio 2x1 / 1x2: {rates['2x1'] / rates['1x2']:.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))

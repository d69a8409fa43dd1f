"""How fast does the local model answer the main job's rows? (issue 14 §2)

Run (from the repository root)::

    python bench/local_speed.py                     # 32 films, max_tokens 128, all three engines
    python bench/local_speed.py --rows 48 --max-tokens 256
    python bench/local_speed.py --only batched --slots 8 --workers 2

Four engines answer the same request bodies (the main job's prompt file
``data/prompts/movies.toml``: its system text, template and schema, as
``response_format`` json_schema) at temperature 0, with the same grammar and
sampling defaults (:func:`pdbatch.local_model.translate_body`), on films evenly
spaced over ``data/movies.csv``:

* **plain**: one ``llama_cpp.Llama`` using every core, ``create_chat_completion``
  row after row (what one writes without pdbatch);
* **pool**: the one-prompt-at-a-time pool of earlier releases
  (``ModelPool(slots=1)``: one-thread instances, one per core, one Python thread each);
* **batched-q4_1**: the batched pool on the shipped Q4_1 file as it is
  (``ModelPool(f16=False)``: batched instances, each decoding ``--slots`` rows
  per forward pass with the shared prefix computed once), fed by as many
  threads as it takes (``pool.concurrency``), as the local backend does;
* **batched**: the default pool (``ModelPool()``): the same on the file's F16
  copy (:mod:`pdbatch.local_model.weights`), which llama.cpp multiplies many
  rows at a time;
* **served** (only with ``--only served``): the default pool behind a local
  Batch API server (``pdbatch serve --engine local``), the rows sent as one
  Batch job through the ``openai`` SDK; the wall time runs from
  ``batches.create`` to the poll (every 0.1 s) that sees it completed. The
  server feeds the pool ``pool.concurrency`` lines at once
  (:mod:`pdbatch.server.lines`). On 2026-12-02, 16 rows (load ~3): 1.42 rows/s,
  against 0.78 rows/s for the server of the release before, which ran a
  batch's lines one at a time. Its answers may be valid less often than the
  others': a Batch job's body carries the schema as sent to OpenAI, without the
  keywords OpenAI refuses (``uniqueItems``, ``maxItems``...; see
  :func:`pdbatch.core.parsing.strict_schema`), so the server's grammar cannot
  enforce them, while the other engines get the whole schema (14/16 in that run).

For each it prints the wall time (model loading excluded), rows/s, completion
tokens/s, the CPU seconds of the process (a steadier figure than wall time on a
machine shared with other work), and the share of answers that parse as JSON and validate against the
schema; then the ratios to **plain**. For the batched engine it also says where
the time went: seconds in ``llama_decode`` (and the tokens it carried, prompt
and answer) against seconds choosing tokens (penalties and grammar). Goal of
issue 14: batched ≥ 3× plain on 2 cores with the same or a better share of
valid answers.

Measured on 2026-12-02 on a 2-core machine shared with other jobs, ``--rows 24
--max-tokens 128`` (load average 1.7 at the start, 2.6 at the end):

============  ========  ======  ======  =======
engine        wall      rows/s  ratio   CPU
============  ========  ======  ======  =======
plain         69.5 s    0.35    1       93.8 s
pool          31.5 s    0.76    2.21x   46.5 s
batched-q4_1  23.5 s    1.02    2.95x   27.2 s
batched       10.8 s    2.23    6.46x   16.4 s
============  ========  ======  ======  =======

24/24 valid for each. Five runs that day of the two batched engines one after
the other (load 1.7-4.5): F16 1.13-2.18x the Q4_1 rows/s and 1.18-1.69x less
CPU. Why F16 is faster: llama.cpp's CPU backend multiplies a Q4_1
matrix by a batch one row at a time, and F16 matrices with a tiled kernel
(``llama_decode`` CPU time a token, one thread, 16 rows 250 tokens deep: Q4_1
14.2 ms, as much as one row alone, 12.9 ms; F16 12.2 ms, and prompt passes
gain much more). Choosing tokens is 5-7 % of the time (about 1 ms a token:
the grammar call on the best candidates and ``argpartition`` of the top 64);
``llama_decode`` is the rest. The plain way suffers most from other jobs (two
spinning threads on busy cores): the README's quiet figure for it is
0.80 rows/s, so quote ratios from quiet runs only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def bodies_and_schema(rows: int, max_tokens: int):
    """The request bodies of ``rows`` films and the schema their grammar enforces."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    import numpy as np
    import pandas as pd
    from pdbatch.core.parsing import strict_schema

    with open(os.path.join(ROOT, "data", "prompts", "movies.toml"), "rb") as fh:
        spec = tomllib.load(fh)
    df = pd.read_csv(os.path.join(ROOT, "data", "movies.csv"))
    df = df.iloc[np.linspace(0, len(df) - 1, min(rows, len(df))).round().astype(int)]
    fmt = {"type": "json_schema", "json_schema": {"name": "movie", "schema": strict_schema(spec["schema"]), "strict": True}}
    bodies = [{"model": "gpt-4o-mini", "temperature": 0, "max_completion_tokens": max_tokens, "response_format": fmt,
               "messages": [{"role": "system", "content": spec["system"]},
                            {"role": "user", "content": spec["template"].format(**row)}]}
              for row in df.to_dict("records")]
    return bodies, strict_schema(spec["schema"], drop=())


def run_plain(path, bodies, schema, threads=None):
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar
    from pdbatch.local_model import translate_body
    from pdbatch.local_model.model import _cpu_count

    threads = threads or _cpu_count()
    llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                          seed=0, verbose=False)
    t0 = time.perf_counter()
    out = []
    for body in bodies:
        kw = translate_body(body, schema)
        kw["grammar"] = LlamaGrammar.from_string(kw["grammar"], verbose=False)
        kw.setdefault("seed", 0)
        out.append(llm.create_chat_completion(**kw))
    return time.perf_counter() - t0, out, None


def run_pool(path, bodies, schema, workers, threads, slots, f16=True):
    from pdbatch.local_model import ModelPool

    pool = ModelPool(path, workers=workers, threads_per_worker=threads, slots=slots, f16=f16)
    out = [None] * len(bodies)
    nxt = iter(range(len(bodies)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            out[i] = pool.complete(bodies[i], schema)

    threads_ = [threading.Thread(target=worker) for _ in range(min(pool.concurrency, len(bodies)))]
    t0 = time.perf_counter()
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    wall = time.perf_counter() - t0
    stats = None
    if pool.slots > 1:
        stats = {k: sum(m.stats[k] for m in pool._models) for k in pool._models[0].stats}
    return wall, out, stats


def run_served(path, bodies, workers, threads, slots):
    """The default pool behind ``pdbatch serve --engine local``: the rows as one Batch job through the openai SDK."""
    import tempfile

    import openai
    from pdbatch.local_model import ModelPool
    from pdbatch.server import BatchServer

    pool = ModelPool(path, workers=workers, threads_per_worker=threads, slots=slots)
    lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b})
                    + "\n" for i, b in enumerate(bodies))
    with tempfile.TemporaryDirectory() as data, BatchServer(engine=pool, data_dir=data) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="bench")
        f = client.files.create(file=("rows.jsonl", lines.encode()), purpose="batch")
        t0 = time.perf_counter()
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        for _ in range(36000):  # at most an hour
            if b.status in ("completed", "failed", "expired", "cancelled"):
                break
            time.sleep(0.1)
            b = client.batches.retrieve(b.id)
        wall = time.perf_counter() - t0
        got = {}
        for raw in client.files.content(b.output_file_id).text.splitlines():
            line = json.loads(raw)
            got[line["custom_id"]] = line["response"]["body"]
    assert b.status == "completed" and len(got) == len(bodies), (b.status, len(got))
    return wall, [got[f"r{i}"] for i in range(len(bodies))], None


def valid_share(answers, schema) -> int:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    ok = 0
    for a in answers:
        try:
            obj = json.loads(a["choices"][0]["message"]["content"])
        except (TypeError, ValueError):
            continue
        ok += validator.is_valid(obj) and all(len(set(v)) == len(v) for v in obj.values() if isinstance(v, list))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--only", choices=["plain", "pool", "batched", "batched-q4_1", "served"], action="append")
    ap.add_argument("--workers", type=int, default=None, help="instances of the pools (default: one per core)")
    ap.add_argument("--threads", type=int, default=None, help="threads per instance of the pools (default 1)")
    ap.add_argument("--slots", type=int, default=None, help="rows per forward pass of the batched engine")
    ap.add_argument("--plain-threads", type=int, default=None,
                    help="threads of the plain Llama (default: every core; on a busy machine two spinning "
                         "threads can be many times slower than one)")
    ap.add_argument("--model", default=None, help="a GGUF file (default: the shipped SmolLM2-135M Q4_1)")
    args = ap.parse_args()

    from pdbatch.local_model import default_model_path

    path = args.model or default_model_path()
    bodies, schema = bodies_and_schema(args.rows, args.max_tokens)
    engines = args.only or ["plain", "pool", "batched-q4_1", "batched"]
    print(f"{len(bodies)} films of data/movies.csv, the main job's prompt and schema, temperature 0, "
          f"max_tokens {args.max_tokens}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    results = {}
    for name in engines:
        cpu0 = time.process_time()
        if name == "plain":
            wall, out, stats = run_plain(path, bodies, schema, args.plain_threads)
        elif name == "pool":
            wall, out, stats = run_pool(path, bodies, schema, args.workers, args.threads, 1)
        elif name == "served":
            wall, out, stats = run_served(path, bodies, args.workers, args.threads, args.slots)
        else:
            wall, out, stats = run_pool(path, bodies, schema, args.workers, args.threads, args.slots,
                                        f16=name == "batched")
        cpu = time.process_time() - cpu0  # loading included; less noisy than wall on a shared machine
        tokens = sum(a["usage"]["completion_tokens"] for a in out)
        valid = valid_share(out, schema)
        results[name] = (wall, tokens)
        print(f"{name:8s} {wall:7.1f} s  {len(out) / wall:6.2f} rows/s  {tokens / wall:7.1f} completion tokens/s  "
              f"valid {valid}/{len(out)}  ({tokens / len(out):.0f} tokens/row; CPU {cpu:.1f} s)", flush=True)
        if stats:
            print(f"         llama_decode {stats['decode_s']:.1f} s for {stats['steps']} passes "
                  f"({stats['batch_tokens'] / max(stats['steps'], 1):.1f} tokens a pass, "
                  f"{stats['batch_tokens'] / max(stats['decode_s'], 1e-9):.0f} tokens/s); choosing tokens "
                  f"{stats['sample_s']:.1f} s ({1000 * stats['sample_s'] / max(stats['sampled'], 1):.2f} ms a token)",
                  flush=True)
    if "plain" in results:
        base = results["plain"][0]
        print("ratios to plain (rows/s): " + ", ".join(
            f"{n} {base / results[n][0]:.2f}x" for n in results if n != "plain"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

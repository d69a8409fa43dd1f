"""The Anthropic round trip, a plain Message Batches loop vs ``df.llm.map``, against one local server.

Run (from the repository root)::

    python bench/anthropic_speed.py [--rows 100000]

The server (a :class:`~pdbatch.server.BatchServer` in a process of its own,
as in ``bench/map_speed.py``, whose engine answers each request at once with a
schema-valid object naming the row's title) serves the Message Batches API;
both flows use the real ``anthropic`` SDK, batches of at most 100,000 requests
and poll every 0.05 s.

(a) **plain loop**: ``iterrows`` → one ``{custom_id, params}`` dict per row
    (system prompt, structured-output schema) → ``messages.batches.create`` →
    ``retrieve`` until ``ended`` → a loop over ``messages.batches.results``,
    ``json.loads`` of each answer's text, the row found from the custom_id →
    new columns.
(b) **pdbatch**: ``df.llm.map(template, response_format=SCHEMA,
    backend=pdbatch.AnthropicBatch(client, poll_interval=0.05,
    max_poll_interval=0.05), cache=False)`` on an empty job store.

Printed: wall time, server busy time and client-side time (wall − busy) of
each, and the ratio of client-side times. Both must give the same answers
(checked on a sample first).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import anthropic  # noqa: E402
import pandas as pd  # noqa: E402

import pdbatch  # noqa: E402
from batchfile_speed import SCHEMA, SYSTEM, make_frame  # noqa: E402
from map_speed import POLL, TEMPLATE, TIMEOUT, ServerProcess, fresh_home, measure, row  # noqa: E402

MODEL = "claude-haiku-4-5"
SHARD = 100_000


def client_for(srv: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.base_url[: -len("/v1")], api_key="bench", max_retries=2, timeout=600.0)


def plain_flow(df: pd.DataFrame, client: anthropic.Anthropic) -> pd.DataFrame:
    batch_ids = []
    for k in range(0, len(df), SHARD):
        requests = []
        for i, (_, r) in enumerate(df.iloc[k:k + SHARD].iterrows(), start=k):
            requests.append({"custom_id": f"task-{i}", "params": {
                "model": MODEL, "max_tokens": 1024, "system": SYSTEM, "temperature": 0.1,
                "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
                "messages": [{"role": "user", "content": f"Title: {r['Series_Title']}\n{r['Overview']}"}]}})
        batch_ids.append(client.messages.batches.create(requests=requests).id)
    results, labels = [], []
    for batch_id in batch_ids:
        deadline = time.monotonic() + TIMEOUT
        while client.messages.batches.retrieve(batch_id).processing_status != "ended":
            if time.monotonic() > deadline:
                raise RuntimeError(f"batch {batch_id} did not end")
            time.sleep(POLL)
        for res in client.messages.batches.results(batch_id):
            i = int(res.custom_id.split("-")[-1])
            labels.append(df.index[i])
            results.append(json.loads(res.result.message.content[0].text))
    return df.join(pd.DataFrame(results, index=labels)[["categories", "summary"]])


def pdbatch_flow(df: pd.DataFrame, client: anthropic.Anthropic) -> pd.DataFrame:
    backend = pdbatch.AnthropicBatch(client, poll_interval=POLL, max_poll_interval=POLL)
    return df.llm.map(TEMPLATE, model=MODEL, system=SYSTEM.replace("{", "{{").replace("}", "}}"),
                      response_format=SCHEMA, temperature=0.1, backend=backend, progress=False, cache=False,
                      timeout=TIMEOUT)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=100_000)
    n = ap.parse_args(argv).rows
    fresh_home()
    df = make_frame(n)
    with ServerProcess() as srv:
        client = client_for(srv)
        plain, pw, pb, pc = measure(srv, plain_flow, df, client)
        ours, ow, ob, oc = measure(srv, pdbatch_flow, df, client)
    sample = random.Random(11).sample(range(n), min(n, 2000))
    assert ours["llm_error"].isna().all()
    assert plain["summary"].iloc[sample].tolist() == ours["summary"].iloc[sample].tolist()
    print(f"{n:,} rows, Message Batches of at most {SHARD:,} requests, polls every {POLL} s")
    print(f"{'flow':<16}{'wall':>11}{'server busy':>15}{'client-side':>15}{'client CPU':>15}")
    print(row("plain loop", pw, pb, pc))
    print(row("pdbatch", ow, ob, oc))
    print(f"client-side ratio (plain / pdbatch): {(pw - pb) / max(ow - ob, 1e-9):.2f}x")


if __name__ == "__main__":
    main()

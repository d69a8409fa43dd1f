"""A child process for the Anthropic crash test: ``python anthropic_child.py ROOT_URL OUT.parquet``.

Runs :func:`run` against the local server's Message Batches API and writes
the result; the test SIGKILLs it between ``messages.batches.create`` and the
recording of the batch id, then runs the same map again.
"""

import sys

import pandas as pd

import pdbatch  # noqa: F401

OPTIONS = dict(model="claude-haiku-4-5", shard_size=2, poll_interval=0.02, max_poll_interval=0.05, progress=False,
               timeout=60)
TEMPLATE = "Row {name}: {text}"
#: Index labels Anthropic would refuse as custom_ids.
LABELS = ["a b", "x/y|z", "ünï", "l" * 80, "ok_1", "h-2"]


def make_frame(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"name": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]},
                        index=(LABELS * (n // len(LABELS) + 1))[:n] if n <= len(LABELS) else None)


def run(client, n: int = 6, **options):
    return make_frame(n).llm.map(TEMPLATE, client=client, **dict(OPTIONS, **options))


if __name__ == "__main__":
    import anthropic

    client = anthropic.Anthropic(base_url=sys.argv[1], api_key="sk-ant-child-secret", max_retries=2, timeout=10)
    run(client).to_parquet(sys.argv[2])

"""A child process for the crash tests: runs one ``map`` against a given server.

``python crashy_child.py BASE_URL OUT.parquet [BACKEND]`` maps :func:`make_frame` with
:data:`OPTIONS` and writes the result; the tests SIGKILL it at chosen points
and run the same map again.
"""

import sys

import pandas as pd

import pdbatch  # noqa: F401

OPTIONS = dict(model="gpt-4o-mini", shard_size=2, poll_interval=0.02, max_poll_interval=0.05, progress=False,
               timeout=60)
TEMPLATE = "Row {name}: {text}"


def make_frame(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"name": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]},
                        index=[f"id{i}" for i in range(n)])


#: The options above that belong to the batch backend only (another backend refuses them).
BATCH_ONLY = ("shard_size", "poll_interval", "max_poll_interval")


def run(client, n: int = 6, **options):
    opts = dict(OPTIONS, **options)
    if opts.get("backend") not in (None, "batch"):
        opts = {k: v for k, v in opts.items() if k not in BATCH_ONLY}
    return make_frame(n).llm.map(TEMPLATE, client=client, **opts)


if __name__ == "__main__":
    import openai

    client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-child-secret-123", max_retries=2, timeout=10)
    extra = {"backend": sys.argv[3], "max_concurrency": 2} if len(sys.argv) > 3 else {}
    run(client, **extra).to_parquet(sys.argv[2])

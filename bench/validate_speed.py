"""What :func:`pdbatch.server.validate.check_body` costs per batch line, next to parsing the line.

Run (from the repository root)::

    python bench/validate_speed.py [--lines 200000]

For each kind of line pdbatch and its users send (a plain chat line, a chat line
with a strict JSON schema and a system prompt, a vision line with two image
parts, a Responses line, an embeddings line of 16 inputs), the script times, over
the same lines in one run: ``orjson.loads`` of the line (what the worker does
anyway for every line) and ``check_body`` of its body. Printed: µs per line of
each and the ratio check/parse, best of 3 runs. One line through the worker costs
both, so the ratio says how much validation adds to the per-line work of reading
the input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE)]

import orjson  # noqa: E402

from pdbatch.core.records import CHAT_URL, EMBEDDINGS_URL, RESPONSES_URL  # noqa: E402
from pdbatch.server.validate import check_body  # noqa: E402

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["country", "population"],
          "properties": {"country": {"type": "string"}, "population": {"type": "integer"}}}
PNG = "data:image/png;base64," + "iVBORw0KGgo" * 40


def bodies(i: int) -> dict:
    """One body of each kind, the row number ``i`` in its text."""
    user = {"role": "user", "content": f"Where is city number {i}? Answer briefly."}
    return {
        "chat": (CHAT_URL, {"model": "gpt-4o-mini", "messages": [user], "temperature": 0,
                            "max_completion_tokens": 50}),
        "chat+schema": (CHAT_URL, {"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "Answer in JSON."}, user], "seed": 7, "temperature": 0.2,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "city", "schema": SCHEMA, "strict": True}}}),
        "vision": (CHAT_URL, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "text", "text": f"Describe picture {i}."},
            {"type": "image_url", "image_url": {"url": f"https://example.com/{i}.png", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": PNG}}]}]}),
        "responses": (RESPONSES_URL, {"model": "gpt-4o-mini", "instructions": "Answer in JSON.",
                                      "input": [user], "max_output_tokens": 50,
                                      "text": {"format": {"type": "json_schema", "name": "city",
                                                          "schema": SCHEMA, "strict": True}}}),
        "embeddings": (EMBEDDINGS_URL, {"model": "text-embedding-3-small",
                                        "input": [f"text {i} {j}" for j in range(16)],
                                        "encoding_format": "float"}),
    }


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000, help="lines timed per kind (default 200000)")
    n = ap.parse_args().lines
    kinds = list(bodies(0))
    print(f"{'kind':<12} {'parse µs/line':>14} {'check µs/line':>14} {'check/parse':>12}")
    for kind in kinds:
        raws = [orjson.dumps({"custom_id": f"r{i}", "method": "POST", "url": bodies(i)[kind][0],
                              "body": bodies(i)[kind][1]}) for i in range(min(n, 2000))]
        raws = (raws * (n // len(raws) + 1))[:n]
        url = bodies(0)[kind][0]
        parsed = [orjson.loads(r)["body"] for r in raws]
        parse = best_of(3, lambda: [orjson.loads(r) for r in raws])
        check = best_of(3, lambda: [check_body(b, url) for b in parsed])
        print(f"{kind:<12} {parse / n * 1e6:>14.2f} {check / n * 1e6:>14.2f} {check / parse:>12.2f}")


if __name__ == "__main__":
    main()

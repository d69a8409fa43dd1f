"""The answer cache on the way out: which of a job's requests still need sending.

Every request line is made with its request hash (:meth:`MapSpec.encode
<pdbatch.core.spec.MapSpec.encode>`); the hashes are looked up in the job
store in chunks, answers found there are stored for this job (as one
segment), and only the rest are yielded to the backend, as ``(custom_id,
line)`` pairs, streaming.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

from ..core.answers import Answers
from ..core.spec import Rendered

__all__ = ["to_send", "CHUNK"]

#: Requests looked up in the cache at a time.
CHUNK = 5000


def to_send(job, rendered: Rendered, use_cache: bool) -> Iterator[Tuple[str, bytes]]:
    """The job's request lines that are neither answered in this job nor (with ``use_cache``) in the cache.

    Records every row's request hash in ``job.hashes`` (the cache key of its
    answer), counts cache hits in ``job.record.cached`` and adds their tokens
    to the job's cached usage (paid by an earlier job, not by this one).
    """
    store, hashes = job.store, job.hashes
    answered = store.answered_ids(job.id, True)
    chunk: List[tuple] = []

    def flush() -> Iterator[Tuple[str, bytes]]:
        hashes.add([c[1] for c in chunk], [c[3] for c in chunk])
        hits: Dict[str, tuple] = store.cached([c[3] for c in chunk]) if use_cache else {}
        if hits:
            rows = [(cid, *hits[h]) for _pos, cid, _line, h in chunk if h in hits and cid not in answered]
            if rows:
                hit = Answers.from_rows(rows)
                # this chunk's hashes only: a lookup in every row's hashes would re-index them per chunk
                store.put_answers(job.id, hit, {c[1]: c[3] for c in chunk}, source="cache")
                job.record.cached += len(rows)
                job.add_cached_usage(hit.usage)
        for _pos, cid, line, h in chunk:
            if h not in hits and cid not in answered:
                yield cid, line

    for item in job.spec.encode(rendered, job.backend.provider):
        chunk.append(item)
        if len(chunk) >= CHUNK:
            yield from flush()
            chunk = []
    if chunk:
        yield from flush()

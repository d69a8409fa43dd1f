"""A job's identity: a fingerprint of what it would send, so that a re-run finds the same job.

The fingerprint covers the spec (everything the request bodies depend on), the
backend, every row's custom_id and rendered inputs, and which rows are not
sent. A re-run of the same ``map`` on the same frame has the same fingerprint
and re-attaches to its job instead of paying again.
"""

from __future__ import annotations

import hashlib
from typing import Any, List, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..core.ids import ids_arrow
from ..core.spec import MapSpec, Rendered

__all__ = ["FINGERPRINT_PREFIX", "fingerprint", "v2_fingerprint", "legacy_fingerprint", "earlier_fingerprints"]

#: Fingerprints of this release start with it; older ones (:func:`legacy_fingerprint`) do not.
FINGERPRINT_PREFIX = "v3:"


def _column_digest(values: Sequence[Any]) -> bytes:
    """64-bit hashes of a column of strings (None allowed), computed by pandas in C; other values by repr."""
    n = len(values)
    try:
        return pd.util.hash_array(np.fromiter(values, dtype=object, count=n), categorize=False).tobytes()
    except (TypeError, ValueError):  # lists (several images a row) and other objects
        texts = np.fromiter((None if v is None else repr(v) for v in values), dtype=object, count=n)
        return pd.util.hash_array(texts, categorize=False).tobytes()


def fingerprint(spec: MapSpec, rendered: Rendered, backend: str) -> str:
    """Identify a job by what it would send: the spec, the backend and every row's inputs.

    The rows' inputs are the columns the templates read, hashed by
    :func:`~pdbatch.core.render.render` from their buffers (values, dtype,
    null mask) without rendering a prompt; then the custom_ids and the
    skipped rows' positions. Two frames whose rows make the same prompts from
    differently typed columns get two fingerprints: the second run then finds
    its answers in the cache (keyed by request) instead of re-attaching.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(spec.key())
    h.update(backend.encode() + b"\x00")
    h.update(rendered.digest)
    ids = ids_arrow(rendered.ids).cast(pa.large_string())
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64, count=len(ids) + 1)
    h.update(offsets.tobytes())
    if ids.buffers()[2] is not None:
        h.update(memoryview(ids.buffers()[2])[:int(offsets[-1])])
    h.update(np.array(sorted(rendered.skipped), dtype=np.int64).tobytes())
    return FINGERPRINT_PREFIX + h.hexdigest()


def _texts(rendered: Rendered):
    """``(ids, user, system, images)`` of every row: the whole texts, for the fingerprints of earlier releases."""
    user: list = []
    system: Optional[list] = [] if rendered.per_row_system else None
    images: Optional[list] = [] if rendered.images is not None else None
    for chunk in rendered.chunks():
        user += chunk.user
        if system is not None:
            system += chunk.system
        if images is not None:
            images += chunk.images
    return rendered.ids, user, system, images


def v2_fingerprint(spec: MapSpec, rendered: Rendered, backend: str, texts=None) -> str:
    """The fingerprint of the release that hashed rendered texts ("v2:"), to re-attach its unfinished jobs."""
    h = hashlib.blake2b(digest_size=16)
    h.update(spec.key())
    h.update(backend.encode() + b"\x00")
    for name, column in zip(("ids", "user", "system", "images"), texts or _texts(rendered)):
        if column is not None:
            h.update(name.encode() + b"\x00" + _column_digest(column))
    h.update(np.array(sorted(rendered.skipped), dtype=np.int64).tobytes())
    return "v2:" + h.hexdigest()


def legacy_fingerprint(spec: MapSpec, rendered: Rendered, backend: str, texts=None) -> str:
    """The fingerprint of releases before "v2:" (to re-attach their unfinished jobs)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(spec.key())
    h.update(backend.encode() + b"\x00")
    ids, user, system, images = texts or _texts(rendered)
    skipped = rendered.skipped
    for pos, cid in enumerate(ids):
        parts = [cid, "" if pos in skipped else (user[pos] or "")]
        if system is not None:
            parts.append(system[pos] or "")
        if images is not None:
            parts.append(repr(images[pos]))
        h.update("\x00".join(parts).encode("utf-8", "surrogatepass") + b"\x01")
    return h.hexdigest()


def earlier_fingerprints(spec: MapSpec, rendered: Rendered, backend: str) -> List[str]:
    """The fingerprints earlier releases gave this job (rendering every text once: only when such jobs exist)."""
    texts = _texts(rendered)
    return [v2_fingerprint(spec, rendered, backend, texts), legacy_fingerprint(spec, rendered, backend, texts)]

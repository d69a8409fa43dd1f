"""A job's identity: a fingerprint of what it would send, so that a re-run finds the same job.

The fingerprint covers the spec (everything the request bodies depend on), the
backend, every row's custom_id and rendered inputs, and which rows are not
sent. A re-run of the same ``map`` on the same frame has the same fingerprint
and re-attaches to its job instead of paying again.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..core.spec import MapSpec, Rendered

__all__ = ["FINGERPRINT_PREFIX", "fingerprint", "legacy_fingerprint"]

#: Fingerprints of this release start with it; older ones (:func:`legacy_fingerprint`) do not.
FINGERPRINT_PREFIX = "v2:"


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

    Each rendered column is hashed row by row in C (``pandas.util.hash_array``,
    64 bits a row), and the row hashes of every column, the custom_ids and the
    skipped rows' positions are hashed together.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(spec.key())
    h.update(backend.encode() + b"\x00")
    for name, column in (("ids", rendered.ids), ("user", rendered.user), ("system", rendered.system),
                         ("images", rendered.images)):
        if column is not None:
            h.update(name.encode() + b"\x00" + _column_digest(column))
    h.update(np.array(sorted(rendered.skipped), dtype=np.int64).tobytes())
    return FINGERPRINT_PREFIX + h.hexdigest()


def legacy_fingerprint(spec: MapSpec, rendered: Rendered, backend: str) -> str:
    """The fingerprint of releases before :data:`FINGERPRINT_PREFIX` (to re-attach their unfinished jobs)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(spec.key())
    h.update(backend.encode() + b"\x00")
    user, system, images, skipped = rendered.user, rendered.system, rendered.images, rendered.skipped
    for pos, cid in enumerate(rendered.ids):
        parts = [cid, "" if pos in skipped else (user[pos] or "")]
        if system is not None:
            parts.append(system[pos] or "")
        if images is not None:
            parts.append(repr(images[pos]))
        h.update("\x00".join(parts).encode("utf-8", "surrogatepass") + b"\x01")
    return h.hexdigest()

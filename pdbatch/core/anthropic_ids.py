"""Anthropic custom_ids: every pdbatch custom_id mapped to one that matches ``^[a-zA-Z0-9_-]{1,64}$``.

pdbatch's custom_id is the index label as a string, which may hold spaces,
slashes, unicode or be long; Message Batches refuse the whole batch for one
such id. :func:`anthropic_id` maps each id to a valid one:

* an id that is already valid and does not start with ``h-`` is kept as is
  (so ``0``, ``row_12`` or ``a-b`` read the same in the provider's console);
* any other id becomes ``h-`` and the first 62 hex digits of its SHA-256.

The map is a pure function of the id, so it is stable across processes and
re-runs: the job keeps its custom_ids, and with them the mapping. Kept ids
never start with ``h-`` and hashed ones always do, so two ids can only
collide if their SHA-256 prefixes (248 bits) do; :class:`IdMap` checks it
anyway and refuses the batch before anything is sent.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable, Dict, Iterable

from ..errors import InputError

__all__ = ["anthropic_id", "IdMap", "VALID"]

VALID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def anthropic_id(custom_id: str) -> str:
    """The Anthropic custom_id of a pdbatch custom_id.

    Examples
    --------
    >>> anthropic_id("row_7")
    'row_7'
    >>> anthropic_id("a b")
    'h-c8687a08aa5d6ed2044328fa6a697ab8e96dc34291e8c2034ae8c38e6fcc6d'
    >>> len(anthropic_id("x" * 100)), anthropic_id("h-1") != "h-1"
    (64, True)
    """
    if VALID.fullmatch(custom_id) and not custom_id.startswith("h-"):
        return custom_id
    return "h-" + hashlib.sha256(custom_id.encode("utf-8", "surrogatepass")).hexdigest()[:62]


class IdMap:
    """The two-way map of a set of custom_ids (a batch), collision-checked.

    ``id_of`` maps one id (:func:`anthropic_id`).

    Examples
    --------
    >>> m = IdMap(["a b", "c"])
    >>> m.back[m.out["a b"]], m.out["c"]
    ('a b', 'c')
    """

    def __init__(self, ids: Iterable[str], id_of: Callable[[str], str] = anthropic_id) -> None:
        self.out: Dict[str, str] = {}
        self.back: Dict[str, str] = {}
        for cid in ids:
            aid = id_of(cid)
            other = self.back.get(aid)
            if other is not None and other != cid:
                raise InputError(f"the index labels {other!r} and {cid!r} map to the same Anthropic custom_id "
                                 f"{aid!r}; rename one of them (e.g. df.index = df.index.map(str))")
            self.out[cid], self.back[aid] = aid, cid

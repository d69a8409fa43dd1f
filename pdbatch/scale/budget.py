"""A whole-collection ``max_cost`` for ``ddf.llm.map``: one estimate up front, a share of the cap per partition.

Each partition of a Dask collection runs as its own pandas job, and a pandas
job's ``max_cost`` caps that job alone. So ``ddf.llm.map(..., max_cost=C)``:

1. estimates every partition at the call, as :meth:`ddf.llm.estimate
   <pdbatch.scale.accessor.DaskAccessor.estimate>` does (a partition at a
   time on the workers: its index read and its rows rendered and counted;
   nothing is sent, no job is made);
2. refuses the call with :class:`~pdbatch.errors.BudgetError` when the
   collection's estimate does not fit under ``C`` (the same rules as the
   pandas ``max_cost``: over the cap, a price unknown, an unbounded output on
   the batch backend);
3. gives partition *i* the cap ``C * e_i / E`` (its estimate ``e_i`` over the
   total ``E``, at the rate the backend pays), rounded down so that the caps
   add up to at most ``C``. A partition with nothing to send gets the smallest
   positive cap, so it can send nothing.

What is guaranteed: the partitions' caps never add up to more than ``C``,
and each partition's job holds to its cap as a pandas ``map`` holds to
``max_cost`` (refused before sending when its own estimate is over it; on the
realtime backend it stops sending once its answers' cost reaches it). Hence
the collection is refused before anything is sent when its estimate is over
``C``, and together the partitions spend no more than a pandas ``map`` of the
whole frame with ``max_cost=C`` would. Each partition's share is at least its
own estimate, so a partition whose rows are unchanged at compute is not
refused; rows that changed between the call and the compute (new data under
the same paths) can make a partition refuse on its own. The caps are fixed
when the graph is built: computing it again reuses them (finished jobs are
answered from the cache and cost nothing). The local backend is free:
``max_cost`` is passed on unchanged and nothing is estimated.

Prices: the collection's estimate and the shares are priced in the process
that calls ``map``; each partition's own check is priced on its worker. A
price given with :func:`~pdbatch.pricing.set_price` lives in the process that
set it, so on a cluster give prices for models outside the built-in table
with a ``PDBATCH_PRICES`` file every worker reads (a worker without the price
refuses its partition, saying so, before sending anything).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, List, Optional

from ..core.records import Usage
from ..pricing import cost
from ..pricing.prices import batch_priced
from ..pricing.budget import check_estimate
from ..pricing.tokens import token_counter, unavailable_encodings
from .partition import ClientRef, estimate_partition

__all__ = ["merge", "partition_estimates", "split_cap", "frame_caps"]


def merge(ests: List[dict], partitions: int) -> dict:
    """One estimate of several partitions' (their counts added, the cost priced on the total)."""
    from ..pricing.estimate import _summary

    first = dict(ests[0])
    for key in ("rows", "requests", "cached", "skipped", "input_tokens", "images", "image_tokens"):
        first[key] = sum(e[key] for e in ests)
    reasons: Counter = Counter()
    for e in ests:
        reasons.update(e["skip_reasons"])
    first["skip_reasons"] = dict(reasons.most_common())
    outs = [e["output_tokens"] for e in ests if e["requests"]]
    first["output_tokens"] = None if any(o is None for o in outs) else sum(outs)
    caps = [e["max_output_per_request"] for e in ests if e["max_output_per_request"] is not None]
    first["max_output_per_request"] = max(caps) if caps and first["output_tokens"] is not None else None
    usage = Usage(first["input_tokens"], first["output_tokens"] or 0)
    for key, batch in (("cost_batch", True), ("cost_realtime", False)):
        first[key] = cost(usage, first["model"], batch=batch, provider=first["provider"])
    first["partitions"] = partitions
    first["summary"] = _summary(first)
    return first


def partition_estimates(obj: Any, ids: Any, template: str, options: Dict[str, Any]) -> List[dict]:
    """The pandas estimate of every partition of ``obj`` (computed now, a partition per task).

    ``options`` are the pandas ``estimate``'s keyword arguments (``client``
    included; the backend as the workers get it). The workers count tokens
    the way this process does: an encoding this process could not load is
    not tried again there (:func:`~pdbatch.pricing.tokens.unavailable_encodings`).
    """
    import dask

    token_counter(options.get("model"))  # tried here first (once per process), so its finding travels
    work = dict(options)
    client = work.pop("client", None)
    ref = ClientRef(client) if client is not None else None
    offline = unavailable_encodings()
    parts = obj.to_delayed()
    return list(dask.compute(*[dask.delayed(estimate_partition)(p, ids, template, work, ref, offline)
                               for p in parts]))


def split_cap(cap: float, costs: List[float]) -> List[float]:
    """Shares of ``cap`` proportional to ``costs``, each at least its cost when they fit, adding up to at most ``cap``.

    A zero cost gets the smallest positive share (a cap must be above 0).

    Examples
    --------
    >>> [round(x, 9) for x in split_cap(1.0, [0.1, 0.3, 0.0])]
    [0.25, 0.75, 0.0]
    >>> math.fsum(split_cap(0.3, [0.1, 0.1, 0.1])) <= 0.3
    True
    """
    total = math.fsum(costs)
    tiny = math.ulp(0.0)
    if total <= 0:
        return [tiny for _ in costs]
    slack = max(cap - total, 0.0)
    shares = [c + slack * (c / total) if c > 0 else tiny for c in costs]
    for _ in range(64):  # rounding can put the sum an ulp or so over the cap: take it back from the largest
        over = math.fsum(shares) - cap
        if over <= 0:
            break
        k = max(range(len(shares)), key=shares.__getitem__)
        shares[k] = max(tiny, math.nextafter(shares[k] - over, 0.0))
    return shares


def frame_caps(obj: Any, ids: Any, template: str, options: Dict[str, Any], max_cost: float, backend: Any,
               tier: Optional[str]) -> Optional[List[float]]:
    """Each partition's share of ``max_cost``, after the whole collection's estimate is checked against it.

    Parameters
    ----------
    obj, ids
        The collection and its cross-partition id check (as ``ddf.llm.estimate`` takes them).
    options : dict
        The pandas ``estimate``'s keyword arguments for the map's arguments.
    backend : Backend
        The backend the map was planned with (its name and whether it runs remotely set the rate).
    tier : str, optional
        The ``service_tier`` the requests ask for.

    Returns
    -------
    list of float or None
        None for the local backend (free: no estimate is made).

    Raises
    ------
    BudgetError
        When the collection's estimate does not fit under ``max_cost``; nothing was sent.
    """
    if backend.name == "local":
        return None
    ests = partition_estimates(obj, ids, template, dict(options, max_cost=None, show=False))
    whole = merge(ests, len(ests))
    remote = not backend.runs_exclusively
    check_estimate(whole, max_cost, backend.name, tier, remote=remote)
    flat = batch_priced(remote, tier)
    costs = []
    for e in ests:  # priced here, as the whole was (prices set with set_price live in this process only)
        c = cost(Usage(e["input_tokens"], e["output_tokens"] or 0), whole["model"], batch=flat,
                 provider=whole["provider"]) if e["requests"] else None
        costs.append(c["total"] if c else 0.0)
    return split_cap(max_cost, costs)

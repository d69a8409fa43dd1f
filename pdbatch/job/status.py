"""What the job store says of a job, without asking any API: listings, and the status of finished jobs.

A finished (or cancelled) job needs no client to be described: its shards,
answers, token usage and cost are all in the store, so ``pdbatch status`` and
``pdbatch jobs`` work offline for it. Only an unfinished job needs the API to
refresh (see :func:`pdbatch.cli_jobs.job_status`), and then its live counts
replace the stored ones.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pandas as pd

from ..backends.batch_state import ORDER
from ..core.records import Usage
from ..pricing.prices import job_cost, paid_usage
from .store import JobRecord, Store, default_store

__all__ = ["jobs", "stored_status", "OFFLINE_STATES", "not_answered_note"]

#: Job states whose status comes from the store alone: nothing more will happen to them.
OFFLINE_STATES = ("finished", "cancelled")
_ENDED = ("failed", "cancelled", "expired")


def jobs(limit: int = 50, store: Optional[Store] = None) -> pd.DataFrame:
    """The newest jobs in the store, one row each.

    Returns
    -------
    DataFrame
        Columns ``job_id, name, created, backend, model, rows, sent, cached, state``: ``name`` as
        ``map(name=...)`` gave it (default the template's first words), ``sent`` and ``cached``
        the rows the job sent and took from the answer cache.
    """
    store = store or default_store()
    recs = store.jobs(limit)
    return pd.DataFrame(
        {
            "job_id": [r.id for r in recs],
            "name": [r.spec.get("_name") for r in recs],
            "created": pd.to_datetime([r.created_at for r in recs], unit="s"),
            "backend": [r.backend for r in recs],
            "model": [r.model for r in recs],
            "rows": [r.rows for r in recs],
            "sent": [r.sent for r in recs],
            "cached": [r.cached for r in recs],
            "state": [r.state for r in recs],
        }
    )


def _state(rec: JobRecord, shards: List[Dict[str, Any]], left: int) -> str:
    """A stored job's state in the words of the Batch API (``completed``, ``cancelled``...)."""
    if rec.state == "cancelled":
        return "cancelled"
    if not shards:  # row by row: finished means every row was answered or given up
        return "completed" if rec.state == "finished" or left == 0 else rec.state
    latest = max(s["attempt"] or 0 for s in shards)
    ended = [s["status"] for s in shards if s["attempt"] == latest and s["status"] in _ENDED]
    if ended:
        return ended[0]
    open_ = [s["status"] for s in shards if s["status"] not in ("completed",) + _ENDED]
    return min(open_, key=lambda x: ORDER.index(x) if x in ORDER else 0) if open_ else "completed"


def stored_status(store: Store, rec: JobRecord) -> Dict[str, Any]:
    """A job's status from the store alone: no client, no API call.

    Returns
    -------
    dict
        ``job_id, name, backend, model, state, rows, created, total`` (requests
        the job sent), ``completed, failed`` (answers to them), ``not_answered``
        (sent, never answered: cancelled, expired or still running),
        ``skipped, cached`` (rows not sent, rows from the answer cache),
        ``batch_ids, batches``, ``usage`` (every stored answer), ``usage_paid``
        (less the cached rows' tokens, which an earlier job paid),
        ``usage_from_cache``, and ``cost`` (of the paid tokens) with
        ``cost_note`` where there is something to say.
    """
    shards = store.shards(rec.id)
    answered, ok = store.count_answers(rec.id), store.count_answers(rec.id, ok_only=True)
    skipped = max(0, rec.rows - rec.sent - rec.cached) if rec.state != "created" else 0
    completed, failed = max(0, ok - rec.cached), max(0, answered - ok)
    left = max(0, rec.sent - completed - failed)
    usage = store.usage(rec.id)
    cached_usage = Usage(*rec.spec.get("_cached_usage", ()))
    paid = paid_usage(usage, cached_usage)
    out: Dict[str, Any] = {
        "job_id": rec.id, "name": rec.spec.get("_name"), "backend": rec.backend, "model": rec.model,
        "state": _state(rec, shards, left), "rows": rec.rows, "created": rec.created_at, "total": rec.sent,
        "completed": completed, "failed": failed, "not_answered": left, "skipped": skipped, "cached": rec.cached,
        "batch_ids": [s["batch_id"] for s in shards if s["batch_id"]],
        "batches": [(s["batch_id"], s["status"]) for s in shards if s["batch_id"]],
        "usage": usage.to_dict(), "usage_paid": paid.to_dict(), "usage_from_cache": cached_usage.to_dict(),
    }
    out.update(job_cost(paid, rec.model, rec.backend, cached_rows=rec.cached, provider=rec.spec.get("_provider"),
                        tier=(rec.spec.get("params") or {}).get("service_tier")))
    return out


def not_answered_note(state: str, left: int, done: bool) -> str:
    """How to name ``left`` requests without an answer: cancelled, expired, or still to come.

    Examples
    --------
    >>> not_answered_note("cancelled", 16, True)
    'cancelled: 16 not answered'
    >>> not_answered_note("in_progress", 3, False)
    '3 still running'
    >>> not_answered_note("completed", 0, True)
    ''
    """
    if not left:
        return ""
    if not done:
        return f"{left} still running"
    return f"{state}: {left} not answered" if state in ("cancelled", "expired") else f"{left} not answered"

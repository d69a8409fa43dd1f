"""The job commands of the ``pdbatch`` command line.

``pdbatch jobs`` / ``status ID`` / ``cancel ID`` / ``result ID --out FILE``
look after jobs in the job store; :mod:`pdbatch.cli` parses the arguments
and calls them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

from .cli_files import CliError, check_out, check_writable, write_frame
from .options import check

__all__ = ["cmd_jobs", "job_status", "cmd_status", "cmd_cancel", "cmd_result"]


def _load_job(job_id: str):
    """``Job.load`` after checking the id exists (unknown id: exit 2); clients come from the environment."""
    from .job.lifecycle import Job
    from .job.store import default_store

    store = default_store()
    if store.job(job_id) is None:
        raise CliError(f"no job {job_id!r} in the store at {store.path}; list the jobs with: pdbatch jobs")
    return Job.load(job_id, store=store)  # batch jobs: OpenAI() from OPENAI_API_KEY / OPENAI_BASE_URL


def _cell(text: Any, width: int = 28) -> str:
    text = "" if text is None else " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def cmd_jobs(args: argparse.Namespace) -> int:
    from .job.status import OFFLINE_STATES, jobs
    from .job.store import default_store

    if args.limit < 1:
        raise CliError(f"--limit must be a whole number >= 1 (the jobs to list), got {args.limit}")
    store = default_store()
    table = jobs(limit=args.limit, store=store)
    if table.empty:
        print(f"no jobs in the store at {store.path}", file=sys.stderr)
        return 0
    done, failed, left, state = [], [], [], []
    for job_id, st, sent, cached in zip(table["job_id"], table["state"], table["sent"], table["cached"]):
        ok, answered = store.count_answers(job_id, ok_only=True), store.count_answers(job_id)
        done.append(ok)
        failed.append(answered - ok)
        left.append(max(0, sent + cached - answered) if st != "created" else 0)
        seen = sorted({s["status"] for s in store.shards(job_id)}) if st not in OFFLINE_STATES else []
        state.append(f"{st} ({','.join(seen)})" if seen else st)  # batch statuses as last seen
    table = table.assign(created=table["created"].dt.strftime("%Y-%m-%d %H:%M:%S"), state=state, done=done,
                         failed=failed, not_answered=left, name=[_cell(n) for n in table["name"]])
    print(table[["job_id", "name", "created", "backend", "model", "rows", "state", "done", "failed",
                 "not_answered"]].to_string(index=False))
    return 0


def job_status(job) -> Dict[str, Any]:
    """A job's status: refreshed through its backend (the API), with the stored counts, tokens and cost."""
    from .job.status import stored_status

    st = stored_status(job.store, job.record)
    live = job.status()
    cached = job.record.cached if job.backend.runs_exclusively else 0  # row by row: progress counts cached rows
    total = max(0, live["total"] - cached)
    completed = min(max(0, live["completed"] - cached), total)
    st.update(state=live["state"], total=total, completed=completed, failed=live["failed"],
              not_answered=max(0, total - completed - live["failed"]), batch_ids=live["batch_ids"],
              batches=[(s.batch_id, s.status) for s in getattr(job.state, "shards", ()) if s.batch_id])
    return st


def _status(job_id: str) -> Dict[str, Any]:
    """A finished job's status from the store (offline); an unfinished one's refreshed through the API."""
    from .errors import BackendUnavailableError
    from .job.status import OFFLINE_STATES, stored_status
    from .job.store import default_store

    store = default_store()
    rec = store.job(job_id)
    if rec is not None and rec.state in OFFLINE_STATES:
        return stored_status(store, rec)
    try:
        job = _load_job(job_id)
    except BackendUnavailableError as err:
        raise BackendUnavailableError(f"job {job_id} is {rec.state}, not finished: its status comes from the API. "
                                      f"{err}") from err
    return job_status(job)


def _tokens(u: Dict[str, int]) -> str:
    return f"{u['input_tokens']} input ({u['cached_tokens']} at the cached-input rate), {u['output_tokens']} output"


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from .backends.base import TERMINAL
    from .job.status import not_answered_note
    from .pricing.prices import format_cost

    st = _status(args.id)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    c = st["cost"]
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(st["created"]))
    batches = ", ".join(f"{b} ({s})" for b, s in st["batches"]) or "none"
    price = f"{format_cost(c)} ({'Batch API, 50% off' if c['batch'] else c['source']})" if c else "unknown"
    left = not_answered_note(st["state"], st["not_answered"], st["state"] in TERMINAL)
    cache = ""
    if st["cached"]:
        cu = st["usage_from_cache"]
        cache = (f"\ntokens of the {st['cached']} row(s) from pdbatch's answer cache (paid by an earlier job): "
                 f"{cu['input_tokens']} input, {cu['output_tokens']} output")
    print(f"job {st['job_id']} ({st['name'] or 'no name'}): backend {st['backend']}, model {st['model']}, "
          f"created {created} UTC\n"
          f"state: {st['state']}\n"
          f"requests: {st['total']} sent, {st['completed']} completed, {st['failed']} failed"
          + (f"; {left}" if left else "") + "\n"
          f"rows: {st['rows']} ({st['skipped']} skipped, {st['cached']} from pdbatch's answer cache)\n"
          f"batches: {batches}\n"
          f"tokens paid (answers stored so far): {_tokens(st['usage_paid'])}{cache}\n"
          f"estimated cost: {price}" + (f"\nnote: {st['cost_note']}" if st.get("cost_note") else ""))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .backends.base import TERMINAL
    from .job.status import OFFLINE_STATES
    from .job.store import default_store

    rec = default_store().job(args.id)
    if rec is not None and rec.state in OFFLINE_STATES:  # known from the store: no API needed
        print(f"job {args.id} is already {rec.state}: nothing to cancel")
        return 0
    job = _load_job(args.id)
    state = job.status()["state"]
    if state in TERMINAL:
        print(f"job {args.id} is already {state}: nothing to cancel")
        return 0
    state = job.cancel().status()["state"]
    print(f"job {args.id}: cancel requested, now {state}; answers already made are kept: "
          f"pdbatch result {args.id} --out FILE")
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    from .pricing.prices import format_cost

    if args.poll_interval is not None:
        check("poll_interval", args.poll_interval, label="--poll-interval")
    if args.timeout is not None:
        check("timeout", args.timeout, label="--timeout")
    out_path = args.out or f"{args.id}.parquet"
    kind = check_out(out_path)
    job = _load_job(args.id)
    if job.host is not None:  # without it, result() says so
        check_writable(job.host, job.spec.new_columns(), out_path, kind)
    if args.poll_interval is not None and hasattr(job.backend, "poll_interval"):
        job.backend.poll_interval = args.poll_interval
    out = job.wait(progress=not args.quiet, timeout=args.timeout).result(overwrite=args.overwrite or None)
    write_frame(out, out_path, kind)
    info = out.attrs.get("pdbatch", {})
    counts = info.get("counts", {})
    print(f"wrote {out_path}: {len(out)} rows, {counts.get('succeeded', 0)} answered, {counts.get('failed', 0)} "
          f"failed, {counts.get('skipped', 0)} skipped (job {info.get('job_id')}, state {info.get('state')}, "
          f"cost {format_cost(info.get('cost'))})", file=sys.stderr)
    return 0

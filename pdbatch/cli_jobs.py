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


def cmd_jobs(args: argparse.Namespace) -> int:
    from .job.lifecycle import jobs
    from .job.store import default_store

    if args.limit < 1:
        raise CliError(f"--limit must be a whole number >= 1 (the jobs to list), got {args.limit}")
    store = default_store()
    table = jobs(limit=args.limit, store=store)
    if table.empty:
        print(f"no jobs in the store at {store.path}", file=sys.stderr)
        return 0
    done, failed, state = [], [], []
    for job_id, st in zip(table["job_id"], table["state"]):
        ok = store.count_answers(job_id, ok_only=True)
        done.append(ok)
        failed.append(store.count_answers(job_id) - ok)
        seen = sorted({s["status"] for s in store.shards(job_id)}) if st != "finished" else []
        state.append(f"{st} ({','.join(seen)})" if seen else st)  # batch statuses as last seen
    table = table.assign(created=table["created"].dt.strftime("%Y-%m-%d %H:%M:%S"), state=state, done=done,
                         failed=failed)
    print(table[["job_id", "created", "backend", "model", "rows", "state", "done", "failed"]].to_string(index=False))
    return 0


def job_status(job) -> Dict[str, Any]:
    """A job's refreshed status with its stored token usage and estimated cost."""
    from .pricing.prices import job_cost

    st = job.status()
    usage = job.store.usage(job.id)
    st.update(model=job.spec.model, rows=len(job.ids), created=job.record.created_at,
              batches=[(s.batch_id, s.status) for s in getattr(job.state, "shards", ()) if s.batch_id],
              usage=usage.to_dict(), **job_cost(usage, job.spec.model, job.backend.name, cached_rows=job.record.cached))
    return st


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from .pricing.prices import format_cost

    st = job_status(_load_job(args.id))
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    u, c = st["usage"], st["cost"]
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(st["created"]))
    batches = ", ".join(f"{b} ({s})" for b, s in st["batches"]) or "none"
    price = f"{format_cost(c)} ({'Batch API, 50% off' if c['batch'] else c['source']})" if c else "unknown"
    print(f"job {st['job_id']}: backend {st['backend']}, model {st['model']}, created {created} UTC\n"
          f"state: {st['state']}\n"
          f"requests: {st['total']} sent, {st['completed']} completed, {st['failed']} failed; "
          f"{st['skipped']} rows skipped, {st['cached']} from the cache ({st['rows']} rows)\n"
          f"batches: {batches}\n"
          f"tokens (answers stored so far): {u['input_tokens']} input ({u['cached_tokens']} cached), "
          f"{u['output_tokens']} output\n"
          f"estimated cost: {price}" + (f"\nnote: {st['cost_note']}" if st.get("cost_note") else ""))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .backends.base import TERMINAL

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

"""The OpenAI Batch API backend (Files + Batches), or any provider with that API.

Requests are written to JSONL shards (50,000 requests / 200 MB each by
default); each is uploaded and submitted as one batch (tagged in ``metadata``
with the job id, shard and submission number) as soon as it is written, while
the next is being written. Every step is recorded before the next one starts:

``written`` → ``uploaded`` (file id) → ``creating`` (the intent, recorded
*before* the call) → the batch id and status (recorded as soon as the call
returns). A process killed between "created" and "recorded" leaves a shard in
``creating``; whoever picks the job up next finds the batch by its metadata
(``batches.list``) instead of creating a second one.

Polling backs off from ``poll_interval`` to ``max_poll_interval``. Finished
shards are downloaded once and their answers stored. Rows that failed for a
retryable reason (``batch_expired``, 429, 5xx, ``server_error``, a batch that
expired or hit ``token_limit_exceeded``) go again in a new batch holding only
those rows, up to ``max_retries`` rounds; answers that are not valid JSON or
fail the schema go again up to ``retry_invalid`` rounds. A shard refused for
the enqueued-token limit waits and is resubmitted as earlier shards finish.

pdbatch retries ``batches.create`` (for ``create_timeout`` seconds), polls and
downloads (for :data:`POLL_PATIENCE`) itself, with the SDK's retries off for
those calls; uploads keep the SDK's. Retries are never stacked.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Dict, Iterator, List, Optional, Tuple

import openai

from ..core.batchfile import MAX_BYTES, MAX_REQUESTS, iter_shards, read_answers
from ..errors import BatchFailedError, JobError, OptionError, PdbatchError
from ..options import check
from ..core.answers import NO_ANSWER, Answers
from ..core.columns import gc_paused, paused_steps
from .progress import progress_bar
from .retry import RETRYABLE_CODES, RetryPolicy, TRANSIENT_ERRORS, call, create_once
from .download import Download
from .base import TERMINAL, Progress, check_client, default_client, openai_provider
from .batch_state import ORDER as _ORDER, BatchState, ShardState, retry_shard, rows_to_retry
from .pickling import PicklesWithoutClient

__all__ = ["Batch", "BatchBackend", "ShardState", "default_client", "RETRYABLE_CODES"]

log = logging.getLogger("pdbatch")

#: Seconds a poll or a download keeps retrying transient failures (5xx, timeouts, resets) before it gives up.
POLL_PATIENCE = 300.0


class Batch(PicklesWithoutClient):
    """Run requests as OpenAI Batch API jobs.

    Parameters
    ----------
    client : openai.OpenAI, optional
        Defaults to ``openai.OpenAI()`` from ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``.
    shard_size, shard_bytes : int
        Per-batch limits on requests and input-file bytes.
    poll_interval, max_poll_interval : float
        First and longest wait between status polls, in seconds.
    create_attempts : int or None
        How many times pdbatch tries ``batches.create`` for one shard at most
        (None: as many as fit in ``create_timeout``).
    create_timeout : float
        Seconds pdbatch keeps retrying ``batches.create`` of one shard after
        a 429, 5xx or connection error, honouring ``Retry-After``; default 120.
    """

    name = "batch"
    runs_exclusively = False  # the batches run remotely; any process may poll and collect
    new_state = staticmethod(BatchState)
    supports_vision = True
    supports_json_schema = True
    supports_embeddings = supports_responses = True

    def __init__(
        self,
        client: Optional["openai.OpenAI"] = None,
        *,
        shard_size: int = MAX_REQUESTS,
        shard_bytes: int = MAX_BYTES,
        poll_interval: float = 2.0,
        max_poll_interval: float = 60.0,
        create_attempts: Optional[int] = None,
        create_timeout: float = 120.0,
    ):
        self._keep_options(shard_size, shard_bytes, poll_interval, max_poll_interval, create_attempts, create_timeout)
        check_client(client)
        self.client = client if client is not None else default_client()
        self.provider = openai_provider(self.client)
        self._create_client = self.client.with_options(max_retries=0)  # pdbatch retries these calls itself
        self._polls = RetryPolicy(None, backoff=1.0, max_backoff=30.0, max_retry_after=120.0, max_elapsed=POLL_PATIENCE)

    # ------------------------------------------------------------ bookkeeping
    @staticmethod
    def _shards(job) -> List[ShardState]:
        return job.state.shards

    @staticmethod
    def _save(job, st: ShardState) -> None:
        job.record_shard(st)

    # ----------------------------------------------------------------- submit
    def submit(self, job, lines: Iterator[Tuple[str, bytes]]) -> None:
        """Write ``(custom_id, line)`` pairs to shards, streaming; record and launch each shard as it is closed.

        Shard ``k`` is uploaded and its batch created while shard ``k + 1`` is
        still to be written, so the provider starts work early. A submit that
        a dead process left half done is resumed: the shards it recorded are
        launched (or found, see :meth:`_launch`) and only the rows in none of
        them are written again, in new shards.
        """
        done = [ShardState.from_store(d) for d in job.stored_shards()]
        sent = {cid for st in done for cid in st.line_ids()}
        job.state.shards = done
        for st in done:
            if st.status in ("written", "uploaded", "creating"):
                self._launch(job, st)
        too_large: Dict[str, str] = {}
        fresh = lines if not sent else ((cid, line) for cid, line in lines if cid not in sent)
        start = max((st.index for st in done), default=-1) + 1
        for sh, ids in paused_steps(iter_shards(fresh, job.workdir, start=start, max_requests=self.shard_size,
                                                max_bytes=self.shard_bytes, too_large=too_large)):
            st = ShardState(sh.index, sh.path, sh.count, sh.bytes, ids=ids)
            job.state.shards.append(st)
            self._save(job, st)  # recorded before its upload: a re-run finds it and never sends its rows twice
            self._launch(job, st)
        if too_large:
            job.record_skipped(too_large)
        job.record_written()

    def attach(self, job, requests=None) -> None:
        """Pick up a job from the store; finish whatever a dead process left half done."""
        job.state.shards = [ShardState.from_store(d) for d in job.stored_shards()]
        for st in self._shards(job):
            if st.status in ("written", "uploaded", "creating"):
                self._launch(job, st)

    def _launch(self, job, st: ShardState) -> None:
        """Upload (if needed) and create the batch of one shard, recording each step first."""
        if st.file_id is None:
            with open(st.path, "rb") as fh:
                st.file_id = self.client.files.create(file=fh, purpose="batch").id
            st.status = "uploaded"
            self._save(job, st)
        if st.status == "creating":
            found = self._find(job.id, st)  # a create may have happened before a crash
            if found is not None:
                st.update(found)
                self._save(job, st)
                return
        st.status = "creating"
        self._save(job, st)  # the intent is on disk before the call
        batch = self._create(job, st)
        st.update(batch)
        self._save(job, st)
        if st.attempt == 0 and st.submits == 0:  # a retry round or a shard sent again after waiting: not new
            job.record_sent(st.count)

    def _keep_options(self, shard_size: int, shard_bytes: int, poll_interval: float, max_poll_interval: float,
                      create_attempts: Optional[int], create_timeout: float) -> None:
        """Check and keep the sharding, polling and create options (shared by every batch API's backend)."""
        self.shard_size = check("shard_size", shard_size)
        self.shard_bytes = check("shard_bytes", shard_bytes)
        self.poll_interval = check("poll_interval", poll_interval)
        self.max_poll_interval = check("max_poll_interval", max_poll_interval)
        self.create_attempts = check("create_attempts", create_attempts)
        self.create_timeout = check("create_timeout", create_timeout)
        if self.max_poll_interval < self.poll_interval:
            raise OptionError(f"max_poll_interval ({max_poll_interval}) must be >= poll_interval ({poll_interval})")

    def _meta(self, job_id: str, st: ShardState) -> Dict[str, str]:
        return {"pdbatch_job": job_id, "pdbatch_shard": str(st.index), "pdbatch_submit": str(st.submits)}

    def _create(self, job, st: ShardState):
        meta = self._meta(job.id, st)
        policy = RetryPolicy(self.create_attempts, backoff=1.0, max_backoff=30.0, max_retry_after=120.0,
                             max_elapsed=self.create_timeout)
        return create_once(
            lambda: self._create_client.batches.create(input_file_id=st.file_id, endpoint=job.spec.url,
                                                       completion_window="24h", metadata=meta),
            lambda: self._find(job.id, st),  # a create that failed on its way back may have gone through
            policy, (openai.APIStatusError, *TRANSIENT_ERRORS),
            what=f"batches.create for shard {st.index} of job {job.id}",
            refused=lambda err: (f"the server refused to create the batch for shard {st.index} of job {job.id} "
                                 f"(HTTP {err.status_code}): {err.message}"),
            given_up=lambda err, n: (f"could not create the batch for shard {st.index} of job {job.id} after {n} "
                                     f"attempts: {err}; run the job again later (it resumes where it stopped), or "
                                     f"pass pdbatch.Batch(create_timeout=...) to keep trying longer"))

    def _find(self, job_id: str, st: ShardState, scan: int = 1000):
        """The batch already created for this shard and submission, found by metadata; None if none."""
        want = self._meta(job_id, st)
        for seen, b in enumerate(self.client.batches.list(limit=100)):
            meta = b.metadata or {}
            if all(meta.get(k) == v for k, v in want.items()):
                return b
            if seen + 1 >= scan:
                break
        return None

    # ----------------------------------------------------------------- status
    def refresh(self, job) -> Progress:
        shards = self._shards(job)
        for st in shards:
            if st.batch_id and st.status not in TERMINAL and st.status != "waiting":
                before = (st.status, st.completed, st.failed)
                st.update(self._api(job, st, "batches.retrieve", lambda: self._retrieve(st.batch_id)))
                if (st.status, st.completed, st.failed) != before:
                    self._save(job, st)
        if not shards:
            return Progress("completed", 0)
        total = sum(s.count for s in shards if s.attempt == 0)
        stored_ok = job.count_answers(ok_only=True) - job.cached_rows if any(s.ingested for s in shards) else 0
        completed = stored_ok + sum(s.completed for s in shards if not s.ingested)
        latest = max(s.attempt for s in shards)
        failed = sum(s.failed for s in shards if s.attempt == latest)
        if all(s.done for s in shards):
            state = next((n for n in ("failed", "cancelled", "expired") if any(s.status == n for s in shards
                                                                                 if s.attempt == latest)),
                         "completed")
        else:
            state = min((s.status for s in shards if not s.done), key=_ORDER.index, default="in_progress")
        return Progress(state, total, min(completed, total), min(failed, total))

    def _retrieve(self, batch_id: str):  # the batch object (another API's subclass adapts its own)
        return self._create_client.batches.retrieve(batch_id)

    def wait(self, job, *, progress: bool, timeout: Optional[float]) -> Progress:
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self.poll_interval
        bar = None
        try:
            while True:
                p = self.refresh(job)
                self._raise_failed(job)
                self._resubmit_waiting(job)
                shards = self._shards(job)
                if any(s.done and not s.ingested for s in shards):
                    self.collect(job)  # each shard as it finishes, while the others still run
                if all(s.done and s.ingested for s in shards):  # what this poll saw finish is stored
                    if self._retry(job):
                        interval = self.poll_interval
                        continue
                    p = self.refresh(job)
                if progress:
                    done, postfix = p.completed + p.failed, f"{p.state}, failed={p.failed}"
                    if bar is None:  # drawn once, at the first poll's counts (a re-attached job's too)
                        # Polls jump in steps: a rate would mislead, so the bar shows counts and time.
                        bar = progress_bar(total=p.total, initial=done, postfix=postfix, unit="req", leave=True,
                                           desc=f"pdbatch {job.id[-10:]}",
                                           bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
                    else:
                        bar.n = done
                        bar.set_postfix_str(postfix)  # draws; close() does not draw the same state again
                if p.done:
                    return p
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobError(
                        f"job {job.id} is still {p.state} after {round(timeout, 2):g} s "
                        f"({p.completed + p.failed}/{p.total} done); it keeps running: pick it up later with "
                        f"pdbatch.Job.load({job.id!r}).wait(), then .result() (give Job.load the client= you "
                        f"gave map, if any), or call job.wait() again"
                    )
                pause = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
                time.sleep(pause)
                interval = min(interval * 1.5, self.max_poll_interval)
        finally:
            if bar is not None:
                bar.close()

    def _raise_failed(self, job) -> None:
        for st in self._shards(job):
            if st.status == "failed":
                raise BatchFailedError(st.batch_id, st.errors or [{"code": "failed", "message": "no details given"}])

    def _resubmit_waiting(self, job) -> None:
        """Shards refused for the enqueued-token limit go again once others have finished."""
        shards = self._shards(job)
        busy = [s for s in shards if not s.done and s.status != "waiting"]
        for st in shards:
            if st.status == "waiting" and len(busy) < max(1, job.state.busy_at_wait.get(st.index, 1)):
                st.submits += 1
                st.errors = []
                self._launch(job, st)
                busy.append(st)
            elif st.status == "waiting":
                job.state.busy_at_wait.setdefault(st.index, len(busy))

    # ---------------------------------------------------------------- results
    def _api(self, job, st: ShardState, what: str, fn):
        """``fn()`` (a poll or a download for shard ``st``) through the poll retry policy; final errors explained."""
        try:
            return call(fn, self._polls, f"{what} for batch {st.batch_id} of job {job.id}")
        except openai.NotFoundError as err:
            raise PdbatchError(
                f"job {job.id}: {what} for batch {st.batch_id} (shard {st.index}) answered 404: the provider no "
                f"longer has it (output files expire some days after the batch ends). The answers stored so far "
                f"are kept: call pdbatch.Job.load({job.id!r}).cancel(), then run the same map again; it takes the "
                f"stored answers from the cache and sends only the rows without one") from err
        except (openai.APIStatusError, *TRANSIENT_ERRORS) as err:
            raise PdbatchError(
                f"job {job.id}: {what} for batch {st.batch_id} (shard {st.index}) failed: {err}; nothing is lost: "
                f"call job.wait() (or run the same map) again later, it resumes") from err

    def _download(self, job, st: ShardState, file_id: str, path: str) -> str:
        """Fetch a file to ``path``, parsed by Arrow as it arrives (kept for :meth:`collect` in ``_early``)."""
        fetch = Download(self._create_client.files.with_streaming_response.content, file_id, path,
                         job.spec.answer_kind)
        self._api(job, st, f"downloading file {file_id}", fetch)
        if fetch.answers is not None:
            self.__dict__.setdefault("_early", {})[path] = fetch.answers
        return path

    def _files(self, job, st: ShardState) -> List[str]:
        paths = []
        for kind, fid in (("output", st.output_file_id), ("errors", st.error_file_id)):
            if fid:
                path = os.path.join(job.workdir, f"{kind}-{st.index:04d}.jsonl")
                if not os.path.exists(path):
                    self._download(job, st, fid, path)
                paths.append(path)
        return paths

    def collect(self, job) -> None:
        """Download and store the answers of every finished shard not yet stored."""
        for st in self._shards(job):
            if st.done and not st.ingested:
                paths, early, answers = self._files(job, st), self.__dict__.get("_early", {}), Answers()
                with gc_paused():  # a shard's answers make no cycles; the collector's passes would cost more
                    for path in paths:  # parsed while downloaded, else read from disk
                        answers.extend(early.pop(path, None) or read_answers(path, job.spec.answer_kind))
                    job.record_answers(answers, attempt=st.attempt)
                st.ingest(answers)
                self._save(job, st)

    def _retry(self, job) -> bool:
        """Send again, in one new shard, the rows of the last round that failed retryably."""
        shards = self._shards(job)
        if not shards or any(s.status == "cancelled" for s in shards):
            return False
        round_ = max(s.attempt for s in shards)
        if round_ >= max(job.max_retries, job.retry_invalid):
            return False
        if job.retry_invalid <= round_ and job.count_answers(ok_only=True) >= job.sent:
            return False  # every row has a plain success: nothing to look for (and no shard file to read)
        last = [s for s in shards if s.attempt == round_]
        look = [st for st in last if not (st.clean and job.retry_invalid <= round_)]  # a clean shard has none
        again = rows_to_retry(job.stored_answers(), [cid for st in look for cid in st.line_ids()],
                              retryable_codes=RETRYABLE_CODES, retry_failed=round_ < job.max_retries,
                              parse=job.spec.fmt.text_parser() if job.retry_invalid > round_ else None)
        if not again:
            return False
        index = max(s.index for s in shards) + 1
        st = retry_shard(last, again, index, os.path.join(job.workdir, f"retry-{index:04d}.jsonl"), round_ + 1)
        ids = st.ids
        shards.append(st)
        self._save(job, st)
        summary = job.state.summary
        summary["resubmitted"] = summary.get("resubmitted", 0) + len(ids)
        log.info("job %s: resubmitting %d row(s) in shard %d (round %d)", job.id, len(ids), index, round_ + 1)
        self._launch(job, st)
        return True

    def unanswered(self, job, pos: int) -> str:
        status = job.state.row_status
        if status is None:  # which shard each row went out in last, and how that batch ended
            status = job.state.row_status = {
                cid: st.status for st in self._shards(job) if not st.clean for cid in st.line_ids()
            }
        s = status.get(job.ids[pos])
        if s == "expired":
            return "batch_expired: the batch's 24 h window ended before this row ran"
        if s == "cancelled":
            return "batch_cancelled: the batch was cancelled before this row ran"
        return NO_ANSWER

    def cancel(self, job) -> None:
        for st in self._shards(job):
            if st.batch_id and st.status not in TERMINAL and st.status not in ("cancelling", "waiting"):
                st.update(self.client.batches.cancel(st.batch_id))
                self._save(job, st)
            elif st.status == "waiting":
                st.status = "cancelled"
                self._save(job, st)


BatchBackend = Batch  # the name of earlier releases

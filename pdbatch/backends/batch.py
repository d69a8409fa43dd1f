"""The OpenAI Batch API backend (Files + Batches), or any provider with that API.

Requests are written to JSONL shards (50,000 requests / 200 MB each by
default), each uploaded and submitted as one batch tagged with the job and
shard ids in ``metadata``. Polling backs off from ``poll_interval`` to
``max_poll_interval``. Output and error files are downloaded to the job's
directory once and read line by line.

Retry policy: the SDK retries every call (its ``max_retries``) *except*
``batches.create``, which pdbatch retries itself: the SDK sends no idempotency
key, so before creating again after an ambiguous failure, pdbatch looks for
the batch it may already have created (by its metadata). Retries are never
stacked.
"""

from __future__ import annotations

import bisect
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import openai

from ..batchfile import MAX_BYTES, MAX_REQUESTS, read_results, write_shards
from ..errors import BackendUnavailableError, BatchFailedError, JobError, PdbatchError
from ..ids import positions
from ..join import NO_ANSWER
from ..records import Request, Result
from .base import TERMINAL, Progress

__all__ = ["BatchBackend", "ShardState", "default_client"]

_ORDER = ["validating", "in_progress", "finalizing", "cancelling", "completed", "expired", "cancelled", "failed"]
_RETRYABLE = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)


def default_client() -> "openai.OpenAI":
    """``openai.OpenAI()`` from the environment, or a clear error naming ``OPENAI_API_KEY``."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise BackendUnavailableError(
            "no OpenAI client: set the OPENAI_API_KEY environment variable (and OPENAI_BASE_URL for "
            "another provider), or pass client=openai.OpenAI(api_key=..., base_url=...)"
        )
    return openai.OpenAI()


@dataclass
class ShardState:
    """One input shard and its batch, as the job tracks it."""

    index: int
    path: str
    count: int
    bytes: int
    first_pos: int = 0
    file_id: Optional[str] = None
    batch_id: Optional[str] = None
    status: str = "pending"
    output_file_id: Optional[str] = None
    error_file_id: Optional[str] = None
    completed: int = 0
    failed: int = 0
    errors: List[dict] = field(default_factory=list)
    downloaded: List[str] = field(default_factory=list)
    fetched: bool = False

    def update(self, batch: Any) -> None:
        """Copy the fields pdbatch tracks from an SDK ``Batch`` object."""
        self.status = batch.status
        self.output_file_id = batch.output_file_id
        self.error_file_id = batch.error_file_id
        rc = batch.request_counts
        if rc is not None:
            self.completed, self.failed = rc.completed, rc.failed
        errs = getattr(batch, "errors", None)
        data = getattr(errs, "data", None) if errs is not None else None
        if data:
            self.errors = [e.model_dump() if hasattr(e, "model_dump") else dict(e) for e in data]


def _retry_after(err: Exception) -> Optional[float]:
    resp = getattr(err, "response", None)
    headers = getattr(resp, "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000.0
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


class BatchBackend:
    """Run requests as OpenAI Batch API jobs.

    Parameters
    ----------
    client : openai.OpenAI, optional
        Defaults to ``openai.OpenAI()`` from ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``.
    shard_size, shard_bytes : int
        Per-batch limits on requests and input-file bytes.
    poll_interval, max_poll_interval : float
        First and longest wait between status polls, in seconds.
    create_attempts : int
        How many times pdbatch tries ``batches.create`` for one shard.
    """

    name = "batch"
    supports_vision = True
    supports_json_schema = True
    supports_embeddings = True

    def __init__(
        self,
        client: Optional["openai.OpenAI"] = None,
        *,
        shard_size: int = MAX_REQUESTS,
        shard_bytes: int = MAX_BYTES,
        poll_interval: float = 2.0,
        max_poll_interval: float = 60.0,
        create_attempts: int = 5,
    ):
        self.client = client if client is not None else default_client()
        self._create_client = self.client.with_options(max_retries=0)
        self.shard_size = int(shard_size)
        self.shard_bytes = int(shard_bytes)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        self.create_attempts = int(create_attempts)

    # ----------------------------------------------------------------- submit
    def submit(self, job, requests: Iterator[Request]) -> None:
        too_large: Dict[str, str] = {}
        shards = write_shards(
            requests, job.workdir, max_requests=self.shard_size, max_bytes=self.shard_bytes, too_large=too_large
        )
        if too_large:
            pos_of = positions(job.ids)
            for cid, reason in too_large.items():
                job.skipped[pos_of[cid]] = reason
        sent = [p for p in range(len(job.ids)) if p not in job.skipped]
        states: List[ShardState] = []
        offset = 0
        for s in shards:
            states.append(ShardState(s.index, s.path, s.count, s.bytes, first_pos=sent[offset]))
            offset += s.count
        job.state["shards"] = states
        for st in states:
            with open(st.path, "rb") as fh:
                st.file_id = self.client.files.create(file=fh, purpose="batch").id
            batch = self._create(job, st)
            st.batch_id = batch.id
            st.update(batch)

    def _create(self, job, st: ShardState):
        meta = {"pdbatch_job": job.id, "pdbatch_shard": str(st.index)}
        delay = 1.0
        last: Optional[Exception] = None
        for _attempt in range(self.create_attempts):
            try:
                return self._create_client.batches.create(
                    input_file_id=st.file_id,
                    endpoint=job.spec.url,
                    completion_window="24h",
                    metadata=meta,
                )
            except _RETRYABLE as err:
                last = err
            except openai.APIStatusError as err:
                if err.status_code in (408, 409):
                    last = err
                else:
                    raise PdbatchError(
                        f"the server refused to create the batch for shard {st.index} of job {job.id} "
                        f"(HTTP {err.status_code}): {err.message}"
                    ) from err
            # The create may have succeeded before the failure reached us: adopt it, never duplicate.
            found = self._find(job.id, st.index)
            if found is not None:
                return found
            time.sleep(min(_retry_after(last) or delay, 120.0))
            delay = min(delay * 2, 30.0)
        raise PdbatchError(
            f"could not create the batch for shard {st.index} of job {job.id} after "
            f"{self.create_attempts} attempts: {last}"
        ) from last

    def _find(self, job_id: str, shard: int, scan: int = 500):
        """The batch already created for (job, shard), found by its metadata; None if none."""
        seen = 0
        for b in self.client.batches.list(limit=100):
            meta = b.metadata or {}
            if meta.get("pdbatch_job") == job_id and meta.get("pdbatch_shard") == str(shard):
                return b
            seen += 1
            if seen >= scan:
                break
        return None

    # ----------------------------------------------------------------- status
    def refresh(self, job) -> Progress:
        shards: List[ShardState] = job.state.get("shards", [])
        for st in shards:
            if st.batch_id and st.status not in TERMINAL:
                st.update(self.client.batches.retrieve(st.batch_id))
        total = sum(s.count for s in shards)
        if not shards:
            return Progress("completed", 0)
        state = min((s.status for s in shards), key=lambda x: _ORDER.index(x) if x in _ORDER else -1)
        if all(s.status in TERMINAL for s in shards):
            for name in ("failed", "expired", "cancelled"):
                if any(s.status == name for s in shards):
                    state = name
                    break
            else:
                state = "completed"
        return Progress(state, total, sum(s.completed for s in shards), sum(s.failed for s in shards))

    def wait(self, job, *, progress: bool, timeout: Optional[float]) -> Progress:
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self.poll_interval
        bar = None
        try:
            while True:
                p = self.refresh(job)
                self._raise_failed(job)
                if progress:
                    if bar is None:
                        bar = tqdm(total=p.total, unit="req", desc=f"pdbatch {job.id[-10:]}", leave=True)
                    bar.n = p.completed + p.failed
                    bar.set_postfix_str(f"{p.state}, failed={p.failed}", refresh=False)
                    bar.refresh()
                if p.done:
                    return p
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobError(
                        f"job {job.id} is still {p.state} after {timeout} s ({p.completed + p.failed}/{p.total} "
                        f"done); it keeps running: call job.wait() again later"
                    )
                pause = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
                time.sleep(pause)
                interval = min(interval * 1.5, self.max_poll_interval)
        finally:
            if bar is not None:
                bar.close()

    def _raise_failed(self, job) -> None:
        for st in job.state.get("shards", []):
            if st.status == "failed":
                raise BatchFailedError(st.batch_id, st.errors or [{"code": "failed", "message": "no details given"}])

    # ---------------------------------------------------------------- results
    def _download(self, file_id: str, path: str) -> str:
        tmp = path + ".part"
        with self.client.files.with_streaming_response.content(file_id) as resp:
            resp.stream_to_file(tmp)
        os.replace(tmp, path)
        return path

    def result_files(self, job) -> List[str]:
        """Download (once) and list the output and error files of every finished shard."""
        paths: List[str] = []
        for st in job.state.get("shards", []):
            if st.status not in TERMINAL:
                continue
            if not st.fetched:
                got = []
                for kind, fid in (("output", st.output_file_id), ("errors", st.error_file_id)):
                    if fid:
                        got.append(self._download(fid, os.path.join(job.workdir, f"{kind}-{st.index:04d}.jsonl")))
                st.downloaded = got
                st.fetched = True
            paths.extend(st.downloaded)
        return paths

    def results(self, job) -> Iterator[Result]:
        yield from read_results(self.result_files(job))

    def unanswered(self, job, pos: int) -> str:
        shards: List[ShardState] = job.state.get("shards", [])
        k = bisect.bisect_right([s.first_pos for s in shards], pos) - 1
        if 0 <= k < len(shards):
            status = shards[k].status
            if status == "expired":
                return "batch_expired: the batch's 24 h window ended before this row ran"
            if status == "cancelled":
                return "batch_cancelled: the batch was cancelled before this row ran"
        return NO_ANSWER

    def cancel(self, job) -> None:
        for st in job.state.get("shards", []):
            if st.batch_id and st.status not in TERMINAL and st.status != "cancelling":
                st.update(self.client.batches.cancel(st.batch_id))

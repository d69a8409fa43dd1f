"""The Anthropic Message Batches backend (``pip install "pdbatch[anthropic]"``).

:class:`AnthropicBatch` is the Batch backend with Anthropic at the edges: the
job's rows are rendered, sharded, recorded, cached, retried and joined exactly
as for OpenAI; only three steps differ.

* **Create**: a shard's chat lines are translated to ``{custom_id, params}``
  requests (:func:`pdbatch.core.anthropic.to_params`; ids mapped by
  :mod:`pdbatch.core.anthropic_ids`) and sent with
  ``messages.batches.create``. There is no file upload.
* **Poll**: the MessageBatch is read as the Batch API's status
  (``in_progress``; ``canceling`` → ``cancelling``; ``ended`` → ``completed``,
  or ``cancelled`` once a cancel was asked).
* **Collect**: ``messages.batches.results`` is written, translated, as the
  output and error files the Batch API would have given
  (:func:`pdbatch.core.anthropic.result_line`), and read by the same reader.

**The crash window.** Message Batches carry no metadata, so a batch cannot be
tagged with its job. Before ``create`` the shard records the intent with the
API's own clock (the ``Date`` header of a ``batches.list(limit=1)`` call, so
that the local clock does not matter; the local time less :data:`CLOCK_SLACK`
when there is no header): ``creating``, ``file_id = "intent:<unix time>"``.
Whoever picks the job up next with the shard still ``creating`` lists the
batches created since (less :data:`DATE_SLACK`), keeps those with the shard's number
of requests not recorded by another shard, and, where a batch has ended,
only if its results hold exactly the shard's custom_ids. One match is adopted;
with several, the oldest. A batch of the same size created by another
program in those seconds while ours never reached the API could be adopted
wrongly: its results then match none of our ids, the rows are unanswered and
go again in the next retry round (the worst case: paying once more for that
shard). Only a batch of another pdbatch job over the same index labels, the
same number of rows and created within those seconds could pass for ours with
its own answers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import orjson

from ..core.anthropic import result_line, to_params
from ..core.anthropic_ids import IdMap
from ..errors import BackendUnavailableError, OptionError, PdbatchError
from .base import TERMINAL
from .batch import POLL_PATIENCE, Batch
from .batch_state import ShardState, raw_lines
from .retry import RetryPolicy, create_once

__all__ = ["AnthropicBatch", "check_spec", "is_anthropic", "anthropic_provider", "MAX_REQUESTS", "MAX_BYTES",
           "CLOCK_SLACK", "DATE_SLACK", "default_anthropic_client"]

log = logging.getLogger("pdbatch")

#: Message Batches limits: requests per batch, and bytes (256 MB; shards stay below it with room to spare).
MAX_REQUESTS = 100_000
MAX_BYTES = 200 * 1024 * 1024
#: Seconds before the intent from which a batch may be ours: the Date header's resolution, and clock skew.
DATE_SLACK, CLOCK_SLACK = 2.0, 300.0


def is_anthropic(client: Any) -> bool:
    """True for a client of the ``anthropic`` SDK (``anthropic.Anthropic``), without importing it."""
    return type(client).__module__.split(".")[0] == "anthropic" and hasattr(client, "messages")


def anthropic_provider(client: Any = None) -> str:
    """Who answers an Anthropic client, as the answer cache sees it: its base URL, never its key.

    Examples
    --------
    >>> anthropic_provider()
    'anthropic https://api.anthropic.com'
    """
    base = str(getattr(client, "base_url", "") or "") if client is not None else \
        (os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com")
    return f"anthropic {base.rstrip('/')}"


def check_spec(spec: Any) -> None:
    """Refuse, before anything is rendered, a spec whose parameters Anthropic's Messages API has no place for."""
    body = {"model": spec.model, "messages": [{"role": "user", "content": ""}], **spec.params}
    if spec.fmt.body is not None:
        body["response_format"] = spec.fmt.body
    to_params(body)


def _status(b: Any) -> SimpleNamespace:
    """A MessageBatch read as the Batch API's batch object (the fields :class:`ShardState` copies)."""
    rc = b.request_counts
    if b.processing_status == "ended":
        status = "cancelled" if b.cancel_initiated_at is not None else "completed"
    else:
        status = {"canceling": "cancelling"}.get(b.processing_status, "in_progress")
    done = status in TERMINAL
    return SimpleNamespace(id=b.id, status=status, output_file_id=f"results:{b.id}" if done else None,
                           error_file_id=None, errors=None,
                           request_counts=SimpleNamespace(completed=rc.succeeded, failed=rc.errored + rc.expired))


class AnthropicBatch(Batch):
    """Run requests as Anthropic Message Batches.

    Parameters
    ----------
    client : anthropic.Anthropic, optional
        Defaults to ``anthropic.Anthropic()`` from ``ANTHROPIC_API_KEY``
        (and ``ANTHROPIC_BASE_URL``).
    shard_size, shard_bytes : int
        Per-batch limits on requests and request bytes (Anthropic allows
        100,000 requests and 256 MB).
    poll_interval, max_poll_interval, create_attempts, create_timeout
        As for :class:`pdbatch.backends.batch.Batch`.
    """

    name = "batch"
    supports_embeddings = False
    check_spec = staticmethod(check_spec)

    def __init__(self, client: Any = None, *, shard_size: int = MAX_REQUESTS, shard_bytes: int = MAX_BYTES,
                 poll_interval: float = 2.0, max_poll_interval: float = 60.0,
                 create_attempts: Optional[int] = None, create_timeout: float = 120.0):
        self._keep_options(shard_size, shard_bytes, poll_interval, max_poll_interval, create_attempts, create_timeout)
        if self.shard_size > MAX_REQUESTS:
            raise OptionError(f"shard_size={shard_size}: a Message Batch holds at most {MAX_REQUESTS} requests")
        if client is None:
            client = default_anthropic_client()
        elif not is_anthropic(client) or type(client).__name__.startswith("Async"):
            raise OptionError(f"client must be a synchronous anthropic.Anthropic client, got {type(client).__name__}; "
                              "pass client=anthropic.Anthropic(api_key=...)")
        self.client = client
        self.provider = anthropic_provider(client)
        self._create_client = client.with_options(max_retries=0)  # pdbatch retries these calls itself
        self._polls = RetryPolicy(None, backoff=1.0, max_backoff=30.0, max_retry_after=120.0,
                                  max_elapsed=POLL_PATIENCE)

    # ------------------------------------------------------------------ create
    def _launch(self, job: Any, st: ShardState) -> None:
        """Create the Message Batch of one shard, the intent recorded first; adopt one a dead process made."""
        if st.status == "creating":
            found = self._adopt(job, st)
            if found is not None:
                st.update(_status(found))
                self._save(job, st)
                return
        requests = self._requests(st)  # refuses what cannot be sent before the intent is recorded
        st.status, st.file_id = "creating", f"intent:{self._now():.3f}"
        self._save(job, st)
        st.update(_status(self._create(job, st, requests)))
        self._save(job, st)
        if st.attempt == 0 and st.submits == 0:
            job.record_sent(st.count)

    @staticmethod
    def _requests(st: ShardState) -> List[Dict[str, Any]]:
        ids = IdMap(st.line_ids())
        return [{"custom_id": ids.out[cid], "params": to_params(orjson.loads(raw)["body"])}
                for cid, raw in zip(st.line_ids(), raw_lines(st.path))]

    def _create(self, job: Any, st: ShardState, requests: Optional[list] = None) -> Any:
        import anthropic
        from anthropic.types.messages import MessageBatch

        payload = orjson.dumps({"requests": requests})
        policy = RetryPolicy(self.create_attempts, backoff=1.0, max_backoff=30.0, max_retry_after=120.0,
                             max_elapsed=self.create_timeout)
        # the body serialized once, by orjson (the SDK would copy and encode 100,000 dicts itself)
        return create_once(
            lambda: self._create_client.post("/v1/messages/batches", cast_to=MessageBatch, content=payload,
                                             options={"headers": {"content-type": "application/json"}}),
            lambda: self._adopt(job, st),  # the create may have gone through before the failure reached us
            policy, (anthropic.APIError,), what=f"messages.batches.create for shard {st.index} of job {job.id}",
            refused=lambda err: (f"Anthropic refused to create the Message Batch for shard {st.index} of job "
                                 f"{job.id} (HTTP {getattr(err, 'status_code', '?')}): {err}"),
            given_up=lambda err, n: (f"could not create the Message Batch for shard {st.index} of job {job.id} "
                                     f"after {n} attempts: {err}; run the job again later (it resumes where it "
                                     f"stopped), or pass pdbatch.AnthropicBatch(create_timeout=...) to keep trying "
                                     f"longer"))

    def _now(self) -> float:
        """The API's time (its ``Date`` header), else the local time less :data:`CLOCK_SLACK`."""
        from email.utils import parsedate_to_datetime

        try:
            raw = self._create_client.messages.batches.with_raw_response.list(limit=1)
            return parsedate_to_datetime(raw.headers["date"]).timestamp()
        except Exception as err:  # no header, or the call failed: the create will tell
            log.debug("no server time for the create intent (%r); using the local clock", err)
            return time.time() - CLOCK_SLACK

    def _adopt(self, job: Any, st: ShardState, scan: int = 1000) -> Any:
        """The batch a crash left unrecorded for this shard (see the module notes), or None."""
        if not (st.file_id or "").startswith("intent:"):
            return None
        since = float(st.file_id.split(":", 1)[1]) - DATE_SLACK
        claimed = {s.batch_id for s in job.state.shards if s.batch_id and s is not st}
        want = set(IdMap(st.line_ids()).back)
        found = []
        for seen, b in enumerate(self._create_client.messages.batches.list(limit=100)):
            if b.created_at.timestamp() < since or seen >= scan:
                break
            rc = b.request_counts
            if b.id in claimed or rc.processing + rc.succeeded + rc.errored + rc.canceled + rc.expired != st.count:
                continue
            if b.processing_status == "ended" and b.results_url and \
                    {r.custom_id for r in self._create_client.messages.batches.results(b.id)} != want:
                continue
            found.append(b)
        if found:
            log.info("job %s: shard %d adopts Message Batch %s created before a crash (%d candidate(s))",
                     job.id, st.index, found[-1].id, len(found))
        return found[-1] if found else None

    # ------------------------------------------------------------------ poll, collect, cancel
    def _retrieve(self, batch_id: str) -> Any:
        return _status(self._create_client.messages.batches.retrieve(batch_id))

    def _api(self, job: Any, st: ShardState, what: str, fn: Any) -> Any:
        import anthropic

        try:
            return super()._api(job, st, what, fn)
        except anthropic.NotFoundError as err:
            raise PdbatchError(f"job {job.id}: {what} for Message Batch {st.batch_id} (shard {st.index}) answered "
                               f"404: Anthropic no longer has it (results are kept 29 days). The stored answers "
                               f"are kept: call pdbatch.Job.load({job.id!r}).cancel(), then run the same map "
                               f"again; only rows without an answer are sent") from err
        except anthropic.APIError as err:
            raise PdbatchError(f"job {job.id}: {what} for Message Batch {st.batch_id} (shard {st.index}) failed: "
                               f"{err}; nothing is lost: call job.wait() (or run the same map) again later") from err

    def _files(self, job: Any, st: ShardState) -> List[str]:
        out = os.path.join(job.workdir, f"output-{st.index:04d}.jsonl")
        err = os.path.join(job.workdir, f"errors-{st.index:04d}.jsonl")
        if not (os.path.exists(out) and os.path.exists(err)):
            self._api(job, st, "reading the results", lambda: self._fetch(st, out, err))
        return [out, err]

    def _fetch(self, st: ShardState, out: str, err: str) -> None:
        back = IdMap(st.line_ids()).back
        tag = f".{os.getpid()}.{threading.get_ident()}.part"  # two processes may fetch the same results
        with open(out + tag, "wb") as fo, open(err + tag, "wb") as fe, \
                self._create_client.messages.batches.with_streaming_response.results(st.batch_id) as resp:
            for raw in resp.iter_lines():  # decoded by orjson: no SDK model per line
                try:
                    r = orjson.loads(raw)
                    cid, result = back.get(r["custom_id"]), r["result"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    if raw.strip():
                        log.warning("Message Batch %s: unreadable result line skipped: %.200s", st.batch_id, raw)
                    continue
                if cid is None:
                    log.warning("Message Batch %s: result for unknown custom_id %r skipped", st.batch_id,
                                r["custom_id"])
                    continue
                line, ok = result_line(cid, result)
                if line is not None:
                    (fo if ok else fe).write(orjson.dumps(line) + b"\n")
        os.replace(err + tag, err)
        os.replace(out + tag, out)

    def cancel(self, job: Any) -> None:
        for st in self._shards(job):
            if st.batch_id and st.status not in TERMINAL and st.status != "cancelling":
                st.update(_status(self.client.messages.batches.cancel(st.batch_id)))
                self._save(job, st)


def default_anthropic_client() -> Any:
    """``anthropic.Anthropic()`` from the environment, or an error saying what to install or set."""
    try:
        import anthropic
    except ImportError as err:
        raise BackendUnavailableError("the Anthropic backend needs the anthropic SDK: "
                                      "pip install 'pdbatch[anthropic]'") from err
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise BackendUnavailableError("no Anthropic client: set the ANTHROPIC_API_KEY environment variable, or "
                                      "pass client=anthropic.Anthropic(api_key=...)")
    return anthropic.Anthropic()

"""The local server's Anthropic side: ``POST /v1/messages`` and the Message Batches API.

The routes answer the documented shapes, so the official ``anthropic`` SDK
(``anthropic.Anthropic(base_url=server.root_url, api_key=...)``) drives them
over HTTP. Each Messages body is translated to the chat body the server's
engine answers (:func:`pdbatch.core.anthropic.from_params`) and the engine's
answer back to a Message (:func:`~pdbatch.core.anthropic.to_message`): the
same scripted engines serve both APIs.

* ``POST /v1/messages/batches`` checks every request before accepting any:
  ``custom_id`` must match ``^[a-zA-Z0-9_-]{1,64}$`` and be unique, ``params``
  needs ``model``, an integer ``max_tokens`` ≥ 1 and non-empty ``messages``
  with roles ``user``/``assistant`` only, and no ``stream``; the first problem
  answers 400 naming ``requests.N.custom_id`` (or ``requests.N.params.X``).
* One thread per batch runs its requests in a shuffled order; the batch is
  ``in_progress`` until all ran, then ``ended`` with ``results_url`` set.
  ``request_counts`` keeps every request in ``processing`` until then.
* Faults of :class:`~pdbatch.server.state.Faults` apply: ``error_for(custom_id,
  params)`` makes a request ``errored`` (5xx → ``api_error``, 529/503 →
  ``overloaded_error``, 4xx → ``invalid_request_error``); ``expire_after``
  ends the batch after that many requests, the rest ``expired``;
  ``request_delay`` and ``validating_delay`` (before the first request) slow it.
* Cancel: ``canceling`` until the worker stops, then ``ended`` with the
  requests not run ``canceled``. Delete: ended batches only (else 400).
* ``POST /v1/messages/count_tokens`` answers ``{"input_tokens": N}`` with the
  engines' own prompt count (so it equals the ``usage.input_tokens`` a Message
  for the same params reports); it takes no ``max_tokens`` and refuses fields
  outside :data:`COUNT_FIELDS`, as the API does.
* Durable like the OpenAI batches (:mod:`pdbatch.server.message_store`): a
  server started again on the same data directory has every batch, and one
  that had not ended runs its requests that have no result yet.
* Errors: ``{"type": "error", "error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, List, Optional

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core.anthropic import COUNT_FIELDS, error_type, from_params, to_message
from ..core.records import CHAT_URL
from ..errors import EngineError
from .engines import estimate_tokens
from .gate import json_response
from .message_store import MessageBatchDisk
from .validate import check_images

__all__ = ["anthropic_routes", "AnthropicBatches", "CUSTOM_ID", "COUNT_FIELDS"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
WINDOW = 24 * 3600


class _Refused(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Response:
    return json_response({"type": "error", "error": {"type": kind, "message": message}}, status)


def _stamp(t: Optional[float]) -> Optional[str]:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def check_params(params: Any, where: str, batch: bool, counting: bool = False) -> None:
    """Raise :class:`_Refused` for Messages ``params`` the API would refuse (``where`` prefixes the field).

    ``counting``: a ``count_tokens`` body, which takes no ``max_tokens`` and
    only the fields of :data:`COUNT_FIELDS`.
    """
    if not isinstance(params, dict):
        raise _Refused(400, f"{where}: Input should be an object")
    if not isinstance(params.get("model"), str) or not params["model"]:
        raise _Refused(400, f"{where}.model: Field required")
    extra = sorted(set(params) - COUNT_FIELDS) if counting else []
    if extra:
        raise _Refused(400, f"{where}.{extra[0]}: Extra inputs are not permitted")
    mt = params.get("max_tokens")
    if not counting and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
        raise _Refused(400, f"{where}.max_tokens: Field required (an integer >= 1)")
    msgs = params.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _Refused(400, f"{where}.messages: Field required (a non-empty list)")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise _Refused(400, f"{where}.messages.{i}.role: Input should be 'user' or 'assistant' (the system "
                                "prompt is the top-level 'system')")
    if batch and params.get("stream"):
        raise _Refused(400, f"{where}.stream: streaming is not supported in a Message Batch")


class AnthropicBatches:
    """Message Batches, stored as they change (:class:`MessageBatchDisk`), each run by its own daemon thread."""

    def __init__(self, server: Any) -> None:
        self.srv = server
        self.lock = threading.RLock()
        self.disk = MessageBatchDisk(server._store)
        self.batches, self.requests, self.results = self.disk.load()
        self.threads: List[threading.Thread] = []

    def resume(self) -> List[str]:
        """Run again every batch that had not ended (call once the server runs); return their ids."""
        root = self.srv.base_url[: -len("/v1")]  # a server started again may listen elsewhere
        with self.lock:
            for bid, obj in self.batches.items():
                obj["_root"] = root
                if obj["results_url"] is not None:
                    obj["results_url"] = f"{root}/v1/messages/batches/{bid}/results"
            ids = list(self.requests)
        for bid in ids:
            self._start(bid)
        return ids

    def _start(self, bid: str) -> None:
        thread = threading.Thread(target=self._run, args=(bid,), name=f"pdbatch-msgbatch-{bid[-6:]}", daemon=True)
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def join(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s in all) for the batch threads of a stopping server to leave."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- answering one request ------------------------------------------------
    def answer(self, params: dict, custom_id: Optional[str] = None) -> dict:
        """The ``result`` of one request: ``succeeded`` with a Message, or ``errored``."""
        faults = self.srv.faults
        fault = faults.error_for(custom_id, params) if (faults.error_for and custom_id) else None
        if fault:
            status, _code, message = fault
            return {"type": "errored", "error": {"type": "error", "error": {
                "type": error_type(int(status)), "message": message}}}
        body = from_params(params)
        try:
            check_images(body, CHAT_URL)
            self.srv.stats.bump("requests_executed")
            answer = self.srv.engine(body, CHAT_URL)
        except EngineError as exc:
            return {"type": "errored", "error": {"type": "error", "error": {
                "type": error_type(exc.status_code), "message": exc.message}}}
        except Exception as exc:
            return {"type": "errored", "error": {"type": "error", "error": {
                "type": "api_error", "message": f"engine failed: {exc!r}"}}}
        return {"type": "succeeded", "message": to_message(answer, params["model"])}

    # -- batches ---------------------------------------------------------------
    def create(self, requests: Any, root: str) -> dict:
        if not isinstance(requests, list) or not requests:
            raise _Refused(400, "requests: Field required (a non-empty list)")
        if len(requests) > MAX_REQUESTS:
            raise _Refused(413, f"requests: at most {MAX_REQUESTS} requests per batch", "request_too_large")
        seen = set()
        for n, req in enumerate(requests):
            cid = req.get("custom_id") if isinstance(req, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
                raise _Refused(400, f"requests.{n}.custom_id: String should match pattern "
                                    f"'^[a-zA-Z0-9_-]{{1,64}}$'")
            if cid in seen:
                raise _Refused(400, f"requests.{n}.custom_id: duplicate custom_id {cid!r}; custom_id must be "
                                    "unique within a batch")
            seen.add(cid)
            check_params(req.get("params"), f"requests.{n}.params", batch=True)
        now = time.time()
        bid = f"msgbatch_{uuid.uuid4().hex[:24]}"
        obj = {"id": bid, "type": "message_batch", "processing_status": "in_progress",
               "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                                  "expired": 0},
               "created_at": _stamp(now), "expires_at": _stamp(now + WINDOW), "ended_at": None,
               "cancel_initiated_at": None, "archived_at": None, "results_url": None,
               "_root": root}
        with self.lock:
            self.disk.create(obj, requests)
            self.batches[bid] = obj
            self.requests[bid] = requests
        self.srv.stats.bump("batches_created")
        view = self.public(bid)  # before the run starts: the answer says "in_progress", as the API's does
        self._start(bid)
        return view

    def public(self, bid: str) -> dict:
        with self.lock:
            obj = self.batches[bid]
            return {k: (dict(v) if isinstance(v, dict) else v) for k, v in obj.items() if not k.startswith("_")}

    def _pause(self, seconds: float, bid: str) -> None:
        """Sleep (not busy time), waking early on cancel or stop."""
        if seconds <= 0:
            return
        deadline = time.monotonic() + seconds
        with self.srv.stats.clock.idle():
            while time.monotonic() < deadline and self.srv.running and not self._canceling(bid):
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))

    def _canceling(self, bid: str) -> bool:
        with self.lock:
            return self.batches[bid]["processing_status"] == "canceling"

    def _run(self, bid: str) -> None:
        with self.srv.stats.clock.busy():  # Stats.busy_seconds: the whole run but its pauses
            self._execute(bid)

    def _execute(self, bid: str) -> None:
        reqs = self.requests[bid]
        order = list(range(len(reqs)))
        if self.srv.faults.shuffle_output and len(order) > 1:
            random.Random(bid).shuffle(order)
        log = self.disk.results(bid)
        answered, _ = log.recover()  # a resumed batch: those have their result
        if not answered:
            self._pause(self.srv.faults.validating_delay, bid)
        expire = self.srv.faults.expire_after
        for done, i in enumerate(order):
            cid = reqs[i]["custom_id"]
            if cid in answered:
                continue
            if not self.srv.running:  # stopping: the batch resumes at the next start
                log.close()
                return
            if self._canceling(bid):
                result = {"type": "canceled"}
            elif expire is not None and done >= expire:
                result = {"type": "expired"}
            else:
                result = self.answer(reqs[i]["params"], cid)
                self._pause(self.srv.faults.request_delay, bid)
            log.write({"custom_id": cid, "result": result})
            log.sync(False)  # to the OS at once: a killed server keeps it
        lines, counts = self.disk.finish(log)
        with self.lock:
            obj = self.batches[bid]
            obj.update(processing_status="ended", ended_at=_stamp(time.time()),
                       results_url=f"{obj['_root']}/v1/messages/batches/{bid}/results")
            obj["request_counts"] = dict(counts, processing=0)
            self.results[bid] = lines
            self.requests.pop(bid, None)
            self.disk.save(obj)

    def cancel(self, bid: str) -> dict:
        with self.lock:
            obj = self.batches[bid]
            if obj["processing_status"] == "in_progress":
                obj.update(processing_status="canceling", cancel_initiated_at=_stamp(time.time()))
                self.disk.save(obj)
            return self.public(bid)  # under the lock: the answer says "canceling" even if the run ends next

    def delete(self, bid: str) -> dict:
        with self.lock:
            if self.batches[bid]["processing_status"] != "ended":
                raise _Refused(400, f"Batch {bid} cannot be deleted while it is processing; cancel it first.")
            del self.batches[bid]
            self.results.pop(bid, None)
            self.disk.drop(bid)
        return {"id": bid, "type": "message_batch_deleted"}

    def page(self, limit: int, after: Optional[str], before: Optional[str]) -> dict:
        with self.lock:
            ids = list(reversed(list(self.batches)))  # newest first
        if after is not None:
            ids = ids[ids.index(after) + 1:] if after in ids else []
        if before is not None:
            ids = ids[:ids.index(before)][-limit:] if before in ids else []
        data = [self.public(b) for b in ids[:limit]]
        return {"data": data, "has_more": len(ids) > limit, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}


def anthropic_routes(server: Any) -> List[Route]:
    """The Anthropic routes of ``server`` (a :class:`~pdbatch.server.BatchServer`)."""
    store = AnthropicBatches(server)
    server.anthropic_batches = store

    def handler(fn):
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except _Refused as exc:
                return _error(exc.status, exc.message, exc.kind)
        return endpoint

    async def body_of(request: Request) -> dict:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise _Refused(400, "The request body is not valid JSON.")
        return body

    def known(request: Request) -> str:
        bid = request.path_params["batch_id"]
        with store.lock:
            if bid not in store.batches:
                raise _Refused(404, f"No Message Batch {bid}", "not_found_error")
        return bid

    async def messages(request: Request) -> Response:
        server.stats.bump("realtime_calls")
        status = server.faults.pop_realtime_error()
        if status is not None:
            return _error(status, "injected by pdbatch faults", error_type(status))
        params = await body_of(request)
        check_params(params, "params", batch=False)
        if params.get("stream"):
            raise _Refused(400, "stream: streaming is not supported by the pdbatch server")
        if server.faults.realtime_latency:
            import asyncio
            await asyncio.sleep(server.faults.realtime_latency)
        result = await run_in_threadpool(store.answer, params)
        if result["type"] == "errored":
            err = result["error"]["error"]
            from ..core.anthropic import error_status
            return _error(error_status(err["type"]), err["message"], err["type"])
        return json_response(result["message"])

    async def count_tokens(request: Request) -> Response:
        params = await body_of(request)
        check_params(params, "params", batch=False, counting=True)
        # the engines' own prompt count (what a Message's usage.input_tokens says for the same params)
        return json_response({"input_tokens": estimate_tokens(from_params(params)["messages"])})

    async def create(request: Request) -> Response:
        body = await body_of(request)
        root = str(request.base_url).rstrip("/")
        return json_response(await run_in_threadpool(store.create, body.get("requests"), root))

    async def listing(request: Request) -> Response:
        q = request.query_params
        try:
            limit = int(q.get("limit", 20))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise _Refused(400, "limit: must be an integer from 1 to 1000")
        return json_response(store.page(limit, q.get("after_id"), q.get("before_id")))

    async def retrieve(request: Request) -> Response:
        return json_response(store.public(known(request)))

    async def cancel(request: Request) -> Response:
        return json_response(store.cancel(known(request)))

    async def delete(request: Request) -> Response:
        return json_response(store.delete(known(request)))

    async def results(request: Request) -> Response:
        bid = known(request)
        with store.lock:
            lines = store.results.get(bid)
        if lines is None:
            raise _Refused(400, f"Message Batch {bid} has not ended; its results are not available yet.")
        return Response(b"".join(line + b"\n" for line in lines), media_type="application/binary")

    base = "/v1/messages/batches"
    return [
        Route("/v1/messages", handler(messages), methods=["POST"]),
        Route("/v1/messages/count_tokens", handler(count_tokens), methods=["POST"]),
        Route(base, handler(create), methods=["POST"]),
        Route(base, handler(listing), methods=["GET"]),
        Route(base + "/{batch_id}", handler(retrieve), methods=["GET"]),
        Route(base + "/{batch_id}", handler(delete), methods=["DELETE"]),
        Route(base + "/{batch_id}/cancel", handler(cancel), methods=["POST"]),
        Route(base + "/{batch_id}/results", handler(results), methods=["GET"]),
    ]

"""The HTTP side of the local Batch API server: a Starlette app.

:func:`build_app` wires the routes of :class:`pdbatch.server.BatchServer`:
Files (uploads streamed to disk with python-multipart, downloads streamed
from disk), Batches and the realtime ``/v1/chat/completions`` and ``/v1/responses``
(``stream: true`` answered as server-sent events by :mod:`pdbatch.server.sse`) and
``/v1/embeddings``, every body checked first by
:func:`pdbatch.server.validate.check_body`. The ASGI gate of :mod:`pdbatch.server.gate`, in front of
every route, records and logs each call, injects ``Faults.http_errors`` and
requires a bearer token. Handlers read ``server.faults``,
``server.stats`` and ``server.engine`` at call time, so tests may change them
between calls.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Optional

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from .engines import EngineError
from ..core.records import CHAT_URL, EMBEDDINGS_URL, RESPONSES_URL
from .gate import Gate, json_response as _json
from .state import BATCH_ENDPOINTS, error_body, status_error
from .responses import answer as answer_with
from .sse import event_stream
from .validate import check_body, check_purpose

__all__ = ["build_app"]

_MAX_FIELD = 64 * 1024


class _ApiError(Exception):
    """Raised inside a handler; answered as an OpenAI-shaped error."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 code: Optional[str] = None, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.body = status, error_body(message, param=param, code=code, type=type)


def _duration(seconds: float) -> str:
    """Format like the API's ``x-ratelimit-reset-*`` headers (``120ms``, ``6m0s``)."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:.0f}s" if minutes else f"{secs:.3g}s"


class _Upload:
    """python-multipart callbacks writing the ``file`` part straight to disk."""

    def __init__(self, dest: Path) -> None:
        self.dest, self.fields, self.filename, self.size = dest, {}, None, 0
        self._fh: Any = None
        self._buf: Optional[bytearray] = None
        self._headers: dict = {}
        self._hname = self._hvalue = b""
        self._name = b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._hfield,
                "on_header_value": self._hval, "on_header_end": self._hend,
                "on_headers_finished": self._headers_done, "on_part_data": self._data,
                "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._buf = {}, None

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _hval(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _hend(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname = self._hvalue = b""

    def _headers_done(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition"))
        self._name = opts.get(b"name", b"")
        if self._name == b"file" and b"filename" in opts and self._fh is None and not self.filename:
            self.filename = opts[b"filename"].decode("utf-8", "replace") or "upload.jsonl"
            self._fh = open(self.dest, "wb")
        else:
            self._buf = bytearray()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._buf is not None:
            self._buf += data[start:end]
            if len(self._buf) > _MAX_FIELD:
                raise _ApiError(400, "A form field is too large.")
        elif self._fh is not None:
            self._fh.write(data[start:end])
            self.size += end - start

    def _end(self) -> None:
        if self._buf is not None:
            self.fields[self._name.decode("utf-8", "replace")] = self._buf.decode("utf-8", "replace")
            self._buf = None
        elif self._fh is not None:
            self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def _json_body(request: Request) -> dict:
    """The request's JSON object body, or a 400 as the API words it."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise _ApiError(400, "We could not parse the JSON body of your request.")
    return body


def _upload_problem(sink: _Upload) -> Optional[_ApiError]:
    """What is wrong with a parsed upload, if anything."""
    if sink.filename is None:
        return _ApiError(400, "Missing required parameter: 'file'.", param="file",
                         code="missing_required_parameter")
    try:
        check_purpose(sink.fields.get("purpose"))
    except EngineError as exc:
        return _ApiError(400, exc.message, param=exc.param, code=exc.code)
    return None


def _expires_after(anchor: Any, seconds: Any, name: str = "expires_after") -> Optional[int]:
    """Seconds of an ``expires_after``-shaped policy (``None`` when both parts are absent)."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise _ApiError(400, f"{name}.anchor must be 'created_at'.", f"{name}.anchor", "invalid_value")
    value = int(seconds) if isinstance(seconds, int) or str(seconds).isdigit() else -1
    if not 3600 <= value <= 2_592_000:
        raise _ApiError(400, f"{name}.seconds must be an integer from 3600 (1 hour) to 2592000 (30 days).",
                        f"{name}.seconds", "invalid_value")
    return value


def build_app(server: Any) -> Starlette:
    """The Starlette app serving ``server`` (a :class:`~pdbatch.server.BatchServer`)."""
    api = _Api(server)

    def wrap(handler: Callable) -> Callable:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _ApiError as exc:
                return _json(exc.body, exc.status)
        return endpoint

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return _json(error_body(f"Invalid URL ({request.method} {request.url.path})"),
                     exc.status_code)

    routes = [
        Route("/v1/files", wrap(api.upload), methods=["POST"]),
        Route("/v1/files", wrap(api.list_files), methods=["GET"]),
        Route("/v1/files/{file_id}", wrap(api.get_file), methods=["GET"]),
        Route("/v1/files/{file_id}", wrap(api.delete_file), methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", wrap(api.file_content), methods=["GET"]),
        Route("/v1/batches", wrap(api.create_batch), methods=["POST"]),
        Route("/v1/batches", wrap(api.list_batches), methods=["GET"]),
        Route("/v1/batches/{batch_id}", wrap(api.get_batch), methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", wrap(api.cancel_batch), methods=["POST"]),
        Route("/v1/models", wrap(api.list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", wrap(api.get_model), methods=["GET"]),
        Route(CHAT_URL, wrap(api.chat), methods=["POST"]),
        Route(EMBEDDINGS_URL, wrap(api.embeddings), methods=["POST"]),
        Route(RESPONSES_URL, wrap(api.responses), methods=["POST"]),
    ]
    from .anthropic_api import anthropic_routes  # the Messages and Message Batches API

    routes += anthropic_routes(server)
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.add_middleware(Gate, server=server)
    return app


class _Api:
    """Route handlers; state comes from the server at call time."""

    def __init__(self, server: Any) -> None:
        self.srv = server
        self.store = server._store

    def _file_or_404(self, file_id: str) -> bytes:
        raw = self.store.dump("file", file_id)
        if raw is None:
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return raw

    @staticmethod
    def _limit(request: Request, default: int, top: int) -> int:
        try:
            limit = int(request.query_params.get("limit", default))
        except ValueError:
            limit = -1
        if not 1 <= limit <= top:
            raise _ApiError(400, f"'limit' must be an integer from 1 to {top}.", param="limit")
        return limit

    async def upload(self, request: Request) -> Response:
        ctype, opts = parse_options_header(request.headers.get("content-type"))
        if ctype != b"multipart/form-data" or b"boundary" not in opts:
            raise _ApiError(400, "Send the file as multipart/form-data.", param="file")
        sink = _Upload(self.store.incoming_path())
        try:
            parser = MultipartParser(opts[b"boundary"], sink.callbacks())
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
            problem = _upload_problem(sink)
            expires = None if problem is not None else _expires_after(
                sink.fields.get("expires_after[anchor]"), sink.fields.get("expires_after[seconds]"))
        except Exception as exc:
            problem = exc if isinstance(exc, _ApiError) else \
                _ApiError(400, f"Malformed multipart body: {exc}", param="file")
        finally:
            sink.close()
        if problem is not None:
            sink.dest.unlink(missing_ok=True)
            raise problem
        obj = await run_in_threadpool(self.store.add_file, sink.dest, sink.filename or "upload",
                                      sink.fields["purpose"], expires_after=expires)  # fsyncs
        self.srv.stats.bump("uploads")
        return _json(obj)

    async def list_files(self, request: Request) -> Response:
        q = request.query_params
        return _json(self.store.list_files(q.get("after"), self._limit(request, 10_000, 10_000),
                                            q.get("order", "desc"), q.get("purpose")))

    async def get_file(self, request: Request) -> Response:
        return _json(self._file_or_404(request.path_params["file_id"]))

    async def delete_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if not self.store.delete_file(file_id):
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return _json({"id": file_id, "object": "file", "deleted": True})

    async def file_content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        self._file_or_404(file_id)
        path = self.store.path(file_id)
        if path is None or not path.exists():
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return FileResponse(path, media_type="application/octet-stream")

    async def create_batch(self, request: Request) -> Response:
        body = await _json_body(request)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(name):
                raise _ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                                code="missing_required_parameter")
        file_id, endpoint = body["input_file_id"], body["endpoint"]
        file = self.store.files.get(file_id)
        if file is None:
            raise _ApiError(400, f"No such File object: {file_id}", param="input_file_id",
                            code="invalid_value")
        if file["purpose"] != "batch":
            raise _ApiError(400, f"File {file_id} has purpose {file['purpose']!r}; batch input "
                            "files need purpose 'batch'.", param="input_file_id",
                            code="invalid_value")
        if endpoint not in BATCH_ENDPOINTS:
            raise _ApiError(400, f"Invalid endpoint {endpoint!r}; expected one of "
                            f"{', '.join(BATCH_ENDPOINTS)}.", param="endpoint",
                            code="invalid_value")
        if body["completion_window"] != "24h":
            raise _ApiError(400, "Invalid completion_window; only '24h' is supported.",
                            param="completion_window", code="invalid_value")
        metadata = body.get("metadata")
        if metadata is not None and not (
                isinstance(metadata, dict) and len(metadata) <= 16 and all(
                    isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                    for k, v in metadata.items())):
            raise _ApiError(400, "metadata must map at most 16 string keys (≤64 characters) "
                            "to string values (≤512 characters).", param="metadata",
                            code="invalid_value")
        policy = body.get("output_expires_after")
        policy = policy if isinstance(policy, dict) or policy is None else {"anchor": policy}
        ttl = _expires_after(*map((policy or {}).get, ("anchor", "seconds")), name="output_expires_after")
        batch = self.store.create_batch(file_id, endpoint, "24h", metadata, output_expires_after=ttl)
        raw = self.store.dump("batch", batch["id"])  # before the worker can touch it
        self.srv.stats.bump("batches_created")
        self.srv._worker.submit(batch["id"])
        return _json(raw)

    def _batch_or_404(self, batch_id: str) -> bytes:
        raw = self.store.dump("batch", batch_id)
        if raw is None:
            raise _ApiError(404, f"No such Batch object: {batch_id}", param="batch_id")
        return raw

    async def _models(self) -> list:
        """The engine's models: ``engine.list_models()`` (the upstream's list), else model objects of
        ``engine.models`` or ``engine.name`` (the echo engines take any name)."""
        engine = self.srv.engine
        if callable(getattr(engine, "list_models", None)):
            try:
                return await run_in_threadpool(engine.list_models)
            except EngineError as exc:
                raise _ApiError(exc.status_code, exc.message, exc.param, exc.code, exc.type) from exc
        names = getattr(engine, "models", None) or [getattr(engine, "name", None) or "echo"]
        return [{"id": str(m), "object": "model", "created": 0, "owned_by": "pdbatch"} for m in names]

    async def list_models(self, request: Request) -> Response:
        return _json({"object": "list", "data": await self._models()})

    async def get_model(self, request: Request) -> Response:
        for m in await self._models():
            if m["id"] == request.path_params["model"]:
                return _json(m)
        raise _ApiError(404, f"The model {request.path_params['model']!r} does not exist on this server.",
                        param="model", code="model_not_found")

    async def get_batch(self, request: Request) -> Response:
        return _json(self._batch_or_404(request.path_params["batch_id"]))

    async def list_batches(self, request: Request) -> Response:
        return _json(self.store.list_batches(request.query_params.get("after"),
                                              self._limit(request, 20, 100)))

    async def cancel_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        self._batch_or_404(batch_id)
        with self.store.lock:
            batch = self.store.batches[batch_id]
            if batch["status"] in ("validating", "in_progress"):  # a finalizing batch is as good as done
                self.store.update_batch(batch_id, status="cancelling",
                                        cancelling_at=int(self.store.now()))
            elif batch["status"] not in ("cancelling", "cancelled"):
                raise _ApiError(400, f"Cannot cancel a batch with status {batch['status']!r}.",
                                param="batch_id", code="invalid_state")
            return _json(self._batch_or_404(batch_id))  # under the lock: the answer says "cancelling", as the API does

    # -- realtime ------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self.realtime(request, CHAT_URL)

    async def embeddings(self, request: Request) -> Response:
        return await self.realtime(request, EMBEDDINGS_URL)

    async def responses(self, request: Request) -> Response:
        return await self.realtime(request, RESPONSES_URL)

    async def realtime(self, request: Request, url: str) -> Response:
        self.srv.stats.bump("realtime_calls")
        faults, headers = self.srv.faults, {}
        rate = faults.take_rate()
        if rate is not None:
            allowed, remaining, reset = rate
            headers = {"x-ratelimit-limit-requests": str(faults.realtime_rpm),
                       "x-ratelimit-remaining-requests": str(remaining),
                       "x-ratelimit-reset-requests": _duration(reset)}
            if not allowed:
                body, extra = status_error(429, max(reset, faults.retry_after))
                return _json(body, 429, {**headers, **extra})
        status = faults.pop_realtime_error()
        if status is not None:
            body, extra = status_error(status, faults.retry_after)
            return _json(body, status, {**headers, **extra})
        body = await _json_body(request)
        try:
            check_body(body, url, realtime=True)  # a request the API refuses never reaches the engine
            if faults.realtime_latency:
                await asyncio.sleep(faults.realtime_latency)
            stream = body.get("stream") is True
            asked = {k: v for k, v in body.items() if k not in ("stream", "stream_options")} if stream else body
            answer = await run_in_threadpool(answer_with, self.srv.engine, asked, url)
        except EngineError as exc:
            return _json(exc.to_body(), exc.status_code, headers)
        except Exception as exc:
            return _json(error_body(f"engine failed: {exc!r}", type="server_error",
                                    code="server_error"), 500, headers)
        if stream and isinstance(answer, dict):
            return event_stream(answer, body, headers, url)
        return _json(answer, 200, headers)

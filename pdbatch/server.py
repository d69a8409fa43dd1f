"""A local OpenAI-compatible Files + Batches API server, backed by an engine.

:class:`BatchServer` runs a Starlette app under uvicorn in a background
thread (127.0.0.1 by default) and answers, in the documented shapes:

* ``POST/GET /v1/files``, ``GET/DELETE /v1/files/{id}``,
  ``GET /v1/files/{id}/content`` (uploads and downloads are streamed to and
  from disk);
* ``POST/GET /v1/batches``, ``GET /v1/batches/{id}``,
  ``POST /v1/batches/{id}/cancel``; the lifecycle is run by one worker thread
  (see :mod:`pdbatch.server_worker`);
* ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` realtime.

Any ``Authorization: Bearer <token>`` is accepted; the token is neither
checked, logged nor stored. :class:`~pdbatch.server_state.Faults` makes the
server fail on purpose; :class:`~pdbatch.server_state.Stats` counts what it
did. State lives in memory; file contents live under ``data_dir`` (a
temporary directory, removed on :meth:`BatchServer.stop`, when not given).

Examples
--------
>>> from pdbatch.server import BatchServer
>>> with BatchServer() as srv:
...     out = srv.client().chat.completions.create(
...         model="m", messages=[{"role": "user", "content": "hello"}])
>>> out.choices[0].message.content
'hello'
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from .engines import EngineError, echo_engine
from .errors import ServerError
from .records import CHAT_URL, EMBEDDINGS_URL
from .server_state import (BATCH_ENDPOINTS, FILE_PURPOSES, Faults, Stats, Store, error_body,
                           status_error)
from .server_worker import BatchWorker

__all__ = ["BatchServer", "Faults", "Stats"]

_MAX_FIELD = 64 * 1024


class _ApiError(Exception):
    """Raised inside a handler; answered as an OpenAI-shaped error."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.body = status, error_body(message, param=param, code=code)


def _json(obj: Any, status: int = 200, headers: Optional[dict] = None) -> Response:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return Response(raw, status_code=status, media_type="application/json", headers=headers)


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


class _Gate:
    """ASGI middleware: records every call, injects faults, requires a bearer token."""

    def __init__(self, app: Any, server: "BatchServer") -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path, logged = scope["method"], scope["path"], []

        async def send_and_see(message: dict) -> None:
            if message["type"] == "http.response.start":  # log before the client can see it
                logged.append(message["status"])
                self.server.stats.record(method, path, message["status"])
            await send(message)

        try:
            code = self.server.faults.pop_http_error(method, path)
            auth = dict(scope["headers"]).get(b"authorization", b"")
            if code is not None:
                body, headers = status_error(code, self.server.faults.retry_after)
                await _drain(receive)
                response = _json(body, code, headers)
            elif not auth.startswith(b"Bearer ") or not auth[7:].strip():
                await _drain(receive)
                response = _json(error_body("Missing bearer token: send the header "
                                            "'Authorization: Bearer <token>' (any token is "
                                            "accepted by this local server).",
                                            code="invalid_api_key"), 401)
            else:
                return await self.app(scope, receive, send_and_see)
            await response(scope, receive, send_and_see)
        finally:
            if not logged:  # the app crashed before answering; Starlette answers 500
                self.server.stats.record(method, path, 500)


async def _drain(receive: Callable) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _uvicorn_server(config: Any) -> Any:
    """A ``uvicorn.Server`` whose idle loop can be woken from another thread.

    uvicorn checks ``should_exit`` every 100 ms; :meth:`wake` makes
    :meth:`BatchServer.stop` take effect at once.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        _loop: Any = None
        _wake: Any = None

        async def main_loop(self) -> None:
            self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + 1) % 864_000
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.1)
                except asyncio.TimeoutError:
                    pass

        def wake(self) -> None:
            self.should_exit = True
            if self._loop is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(self._wake.set)
                except RuntimeError:  # loop closed meanwhile
                    pass

    return _Server(config)


class BatchServer:
    """A local OpenAI-compatible Files + Batches API server.

    Parameters
    ----------
    engine : callable
        ``engine(body, url) -> dict`` answering each request (see
        :mod:`pdbatch.engines`); :func:`~pdbatch.engines.echo_engine` by default.
    faults : Faults, optional
        Failure knobs; a fresh all-off :class:`Faults` by default.
    host : str
        Interface to bind; ``127.0.0.1`` keeps the server local.
    port : int
        TCP port; 0 picks a free one (read it from :attr:`port`).
    data_dir : str or Path, optional
        Where file contents are stored; a temporary directory (deleted by
        :meth:`stop`) when ``None``.
    access_log : bool
        Let uvicorn print one line per request (for ``pdbatch serve``).

    Attributes
    ----------
    faults : Faults
        Mutable between calls.
    stats : Stats
        Counters and the call log.
    """

    def __init__(self, engine: Callable[[dict, str], dict] = echo_engine,
                 faults: Optional[Faults] = None, host: str = "127.0.0.1", port: int = 0,
                 data_dir: Optional[str | Path] = None, *, access_log: bool = False) -> None:
        self.engine = engine
        self.faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self.host, self.port = host, int(port)
        self.access_log = access_log
        self._own_dir = data_dir is None
        self._dir = Path(tempfile.mkdtemp(prefix="pdbatch-server-") if data_dir is None
                         else data_dir)
        self._store = Store(self._dir)
        self._worker: Optional[BatchWorker] = None
        self._uvicorn: Any = None
        self._thread: Optional[threading.Thread] = None
        self._url_host: Optional[str] = None
        self.app = self._build_app()

    # -- public API ----------------------------------------------------------
    @property
    def files(self) -> dict:
        """File objects by id (the JSON the API returns)."""
        return self._store.files

    @property
    def batches(self) -> dict:
        """Batch objects by id (the JSON the API returns)."""
        return self._store.batches

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, for ``openai.OpenAI(base_url=...)``."""
        host = self._url_host or self.host
        return f"http://[{host}]:{self.port}/v1" if ":" in host else f"http://{host}:{self.port}/v1"

    def client(self, **kwargs: Any) -> Any:
        """An ``openai.OpenAI`` client pointed at this server."""
        import openai

        kwargs.setdefault("api_key", "test-key")
        return openai.OpenAI(base_url=self.base_url, **kwargs)

    def start(self, timeout: float = 10.0) -> "BatchServer":
        """Start serving in a daemon thread; return once connections are accepted.

        Raises
        ------
        ServerError
            The address cannot be bound or the server did not come up within
            ``timeout`` seconds.
        """
        if self._thread is not None:
            raise ServerError("this BatchServer is already started; create a new one")
        import uvicorn

        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
            # proto must be IPPROTO_TCP so that asyncio sets TCP_NODELAY on accepted
            # connections; otherwise each small response waits ~40 ms (Nagle + delayed ACK)
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
        except OSError as exc:
            raise ServerError(f"cannot listen on {self.host}:{self.port}: {exc}; choose "
                              "another port (port=0 picks a free one)") from exc
        bound, self.port = sock.getsockname()[:2]
        # a numeric address for clients: the one bound ("localhost" may resolve to
        # another family first), loopback for the wildcard addresses
        self._url_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound, bound)
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", lifespan="off",
                                access_log=self.access_log, ws="none",
                                timeout_graceful_shutdown=2, timeout_keep_alive=5)
        self._uvicorn = _uvicorn_server(config)
        self._worker = BatchWorker(self._store, self.engine, self.faults, self.stats)
        self._worker.start()
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]},
                                        name="pdbatch-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the server did not start on {self.base_url} within "
                                  f"{timeout} s")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the HTTP server and the batch worker (each waits ≤ ``timeout`` s)."""
        if self._uvicorn is not None:
            self._uvicorn.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._uvicorn.force_exit = True
                self._thread.join(1.0)
        if self._worker is not None:
            self._worker.stop(timeout)
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def serve_forever(self) -> None:
        """Start and block until Ctrl-C or SIGTERM (or :meth:`stop`), then stop."""
        if self._thread is None:
            self.start()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def __enter__(self) -> "BatchServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._thread is not None and self._thread.is_alive() else "stopped"
        return f"BatchServer({self.base_url!r}, {state})"

    # -- HTTP ----------------------------------------------------------------
    def _build_app(self) -> Starlette:
        def api(handler: Callable) -> Callable:
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
            Route("/v1/files", api(self._upload), methods=["POST"]),
            Route("/v1/files", api(self._list_files), methods=["GET"]),
            Route("/v1/files/{file_id}", api(self._get_file), methods=["GET"]),
            Route("/v1/files/{file_id}", api(self._delete_file), methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", api(self._file_content), methods=["GET"]),
            Route("/v1/batches", api(self._create_batch), methods=["POST"]),
            Route("/v1/batches", api(self._list_batches), methods=["GET"]),
            Route("/v1/batches/{batch_id}", api(self._get_batch), methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", api(self._cancel_batch), methods=["POST"]),
            Route(CHAT_URL, api(self._chat), methods=["POST"]),
            Route(EMBEDDINGS_URL, api(self._embeddings), methods=["POST"]),
        ]
        app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
        app.add_middleware(_Gate, server=self)
        return app

    def _file_or_404(self, file_id: str) -> bytes:
        raw = self._store.dump("file", file_id)
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

    async def _upload(self, request: Request) -> Response:
        ctype, opts = parse_options_header(request.headers.get("content-type"))
        if ctype != b"multipart/form-data" or b"boundary" not in opts:
            raise _ApiError(400, "Send the file as multipart/form-data.", param="file")
        sink = _Upload(self._store.incoming_path())
        try:
            parser = MultipartParser(opts[b"boundary"], sink.callbacks())
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except _ApiError:
            sink.dest.unlink(missing_ok=True)
            raise
        except Exception as exc:
            sink.dest.unlink(missing_ok=True)
            raise _ApiError(400, f"Malformed multipart body: {exc}", param="file") from exc
        finally:
            sink.close()
        purpose = sink.fields.get("purpose")
        problem = ("missing_required_parameter", "file", "Missing required parameter: 'file'.") \
            if sink.filename is None else \
            ("missing_required_parameter", "purpose", "Missing required parameter: 'purpose'.") \
            if purpose is None else \
            ("invalid_value", "purpose", f"Invalid purpose {purpose!r}; expected one of "
                                         f"{', '.join(FILE_PURPOSES)}.") \
            if purpose not in FILE_PURPOSES else None
        if problem:
            sink.dest.unlink(missing_ok=True)
            raise _ApiError(400, problem[2], param=problem[1], code=problem[0])
        obj = self._store.add_file(sink.dest, sink.filename or "upload", purpose)
        self.stats.bump("uploads")
        return _json(obj)

    async def _list_files(self, request: Request) -> Response:
        q = request.query_params
        return _json(self._store.list_files(q.get("after"), self._limit(request, 10_000, 10_000),
                                            q.get("order", "desc"), q.get("purpose")))

    async def _get_file(self, request: Request) -> Response:
        return _json(self._file_or_404(request.path_params["file_id"]))

    async def _delete_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if not self._store.delete_file(file_id):
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return _json({"id": file_id, "object": "file", "deleted": True})

    async def _file_content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        self._file_or_404(file_id)
        path = self._store.path(file_id)
        if path is None or not path.exists():
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return FileResponse(path, media_type="application/octet-stream")

    async def _create_batch(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise _ApiError(400, "We could not parse the JSON body of your request.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not body.get(name):
                raise _ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                                code="missing_required_parameter")
        file_id, endpoint = body["input_file_id"], body["endpoint"]
        file = self._store.files.get(file_id)
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
        batch = self._store.create_batch(file_id, endpoint, "24h", metadata)
        raw = self._store.dump("batch", batch["id"])  # before the worker can touch it
        self.stats.bump("batches_created")
        self._worker.submit(batch["id"])
        return _json(raw)

    def _batch_or_404(self, batch_id: str) -> bytes:
        raw = self._store.dump("batch", batch_id)
        if raw is None:
            raise _ApiError(404, f"No such Batch object: {batch_id}", param="batch_id")
        return raw

    async def _get_batch(self, request: Request) -> Response:
        return _json(self._batch_or_404(request.path_params["batch_id"]))

    async def _list_batches(self, request: Request) -> Response:
        return _json(self._store.list_batches(request.query_params.get("after"),
                                              self._limit(request, 20, 100)))

    async def _cancel_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        self._batch_or_404(batch_id)
        with self._store.lock:
            batch = self._store.batches[batch_id]
            if batch["status"] in ("validating", "in_progress", "finalizing"):
                batch.update(status="cancelling", cancelling_at=int(time.time()))
            elif batch["status"] not in ("cancelling", "cancelled"):
                raise _ApiError(400, f"Cannot cancel a batch with status {batch['status']!r}.",
                                param="batch_id", code="invalid_state")
        return _json(self._batch_or_404(batch_id))

    # -- realtime ------------------------------------------------------------
    async def _chat(self, request: Request) -> Response:
        return await self._realtime(request, CHAT_URL)

    async def _embeddings(self, request: Request) -> Response:
        return await self._realtime(request, EMBEDDINGS_URL)

    async def _realtime(self, request: Request, url: str) -> Response:
        self.stats.bump("realtime_calls")
        faults, headers = self.faults, {}
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
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise _ApiError(400, "We could not parse the JSON body of your request.")
        if body.get("stream"):
            raise _ApiError(400, "Streaming is not supported by the pdbatch server.",
                            param="stream", code="unsupported_value")
        if faults.realtime_latency:
            await asyncio.sleep(faults.realtime_latency)
        try:
            answer = await run_in_threadpool(self.engine, body, url)
        except EngineError as exc:
            return _json(exc.to_body(), exc.status_code, headers)
        except Exception as exc:
            return _json(error_body(f"engine failed: {exc!r}", type="server_error",
                                    code="server_error"), 500, headers)
        return _json(answer, 200, headers)

"""The ASGI gate in front of every route of the local Batch API server.

:class:`Gate` records each call in ``Stats.log`` (and its time in
``Stats.busy_seconds``), gives every response an ``x-request-id`` header,
injects ``Faults.http_errors``, requires a bearer
token (any token; it is never looked at again) and, when the server was
built with ``access_log=True``, logs one line per request to the
``pdbatch.server`` logger at INFO (``pdbatch serve`` prints them on stderr
unless ``--quiet``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Callable, Optional

import orjson
from starlette.responses import Response

from .state import error_body, status_error

__all__ = ["Gate", "json_response", "request_log"]

#: Where the request log goes: one line per request, ``METHOD PATH STATUS MS``.
request_log = logging.getLogger("pdbatch.server")


def json_response(obj: Any, status: int = 200, headers: Optional[dict] = None) -> Response:
    """A JSON response of ``obj`` (or of bytes already encoded)."""
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return Response(raw, status_code=status, media_type="application/json", headers=headers)


async def _drain(receive: Callable) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"


class Gate:
    """ASGI middleware: records (and logs) every call, injects faults, requires a bearer token."""

    def __init__(self, app: Any, server: Any) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path, logged = scope["method"], scope["path"], []
        clock = self.server.stats.clock  # the whole call is busy time (Stats.busy_seconds)
        clock.enter()
        started = time.monotonic()

        async def send_and_see(message: dict) -> None:
            if message["type"] == "http.response.start":  # log before the client can see it
                message = dict(message, headers=[*message.get("headers", []),
                                                 (b"x-request-id", f"req_{uuid.uuid4().hex}".encode())])
                logged.append(message["status"])
                self.server.stats.record(method, path, message["status"])
                hook = self.server.faults.on_response
                if hook is not None:
                    hook(method, path, message["status"])
            await send(message)

        try:
            code = self.server.faults.pop_http_error(method, path)
            sent = dict(scope["headers"])
            auth = sent.get(b"authorization", b"")
            if not auth and sent.get(b"x-api-key", b"").strip():  # Anthropic's own header (older SDKs)
                auth = b"Bearer " + sent[b"x-api-key"]
            if code is not None:
                body, headers = status_error(code, self.server.faults.retry_after)
                await _drain(receive)
                response = json_response(body, code, headers)
            elif not auth.startswith(b"Bearer ") or not auth[7:].strip():
                await _drain(receive)
                response = json_response(error_body("Missing bearer token: send the header "
                                                    "'Authorization: Bearer <token>' (any token is "
                                                    "accepted by this local server).",
                                                    code="invalid_api_key"), 401)
            else:
                return await self.app(scope, receive, send_and_see)
            await response(scope, receive, send_and_see)
        finally:
            clock.leave()
            if not logged:  # the app crashed before answering; Starlette answers 500
                self.server.stats.record(method, path, 500)
            if self.server.access_log:
                request_log.info("%s %s %d %.0f ms", method, path, logged[0] if logged else 500,
                                 (time.monotonic() - started) * 1000)

"""A local OpenAI-compatible Files + Batches API server, backed by an engine.

:class:`BatchServer` runs a Starlette app under uvicorn in a background
thread (127.0.0.1 by default) and answers, in the documented shapes:

* ``POST/GET /v1/files``, ``GET/DELETE /v1/files/{id}``,
  ``GET /v1/files/{id}/content`` (uploads and downloads are streamed to and
  from disk);
* ``POST/GET /v1/batches``, ``GET /v1/batches/{id}``,
  ``POST /v1/batches/{id}/cancel``; the lifecycle is run by one worker thread
  (see :mod:`pdbatch.server.worker`);
* ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` realtime;
* Anthropic's ``POST /v1/messages`` and Message Batches API
  (``/v1/messages/batches``), answered by the same engine (see
  :mod:`pdbatch.server.anthropic_api`; the ``anthropic`` SDK's ``base_url``
  is the server's root, without ``/v1``).

The HTTP routes live in :mod:`pdbatch.server.app` (the gate in front of them,
which records and logs every call, in :mod:`pdbatch.server.gate`), the batch
lifecycle in :mod:`pdbatch.server.worker`, knobs, counters and stored objects
in :mod:`pdbatch.server.state`; the engines in :mod:`pdbatch.server.engines`.

Any ``Authorization: Bearer <token>`` is accepted; the token is neither
checked, logged nor stored. :class:`~pdbatch.server.state.Faults` makes the
server fail on purpose; :class:`~pdbatch.server.state.Stats` counts what it
did. Files, batches and every answer are stored under ``data_dir`` as they
happen (see :mod:`pdbatch.server.durable`): a server started again on the
same directory -- after a clean stop or a crash -- has every file and batch,
and resumes the batches that had not ended. Without ``data_dir`` a temporary
directory is used and removed on :meth:`BatchServer.stop`. The Anthropic
Message Batches are stored there too, and resumed the same way.

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
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Optional

from .engines import echo_engine
from ..errors import ServerError
from .app import build_app
from .durable import Store
from .state import Faults, Stats
from .worker import BatchWorker

__all__ = ["BatchServer", "Faults", "Stats"]


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
        Where files, batches and answers are stored (see
        :mod:`pdbatch.server.durable`); a temporary directory (deleted by
        :meth:`stop`) when ``None``. One server at a time uses a directory.
    retention : float, optional
        Seconds a finished batch is kept; after that it is deleted with its
        output, error and input files (404). Kept forever when ``None``.
    access_log : bool
        Log one line per request (``METHOD PATH STATUS MS``) to the
        ``pdbatch.server`` logger at INFO; ``pdbatch serve`` prints them on
        stderr unless ``--quiet``.

    Attributes
    ----------
    engine : callable
        Read at each call; it may be swapped between calls.
    faults : Faults
        Read at each call; mutate it (or replace it) between calls.
    stats : Stats
        Counters and the call log.
    app : starlette.applications.Starlette
        The ASGI app, should you want to serve it another way.

    Notes
    -----
    The engine is called from the batch worker thread and, for realtime
    calls, from Starlette's thread pool, possibly at the same time: it must be
    thread-safe (serialise inside it if it wraps a single model object).
    A stopped server cannot be started again; create a new one.
    """

    def __init__(self, engine: Callable[[dict, str], dict] = echo_engine,
                 faults: Optional[Faults] = None, host: str = "127.0.0.1", port: int = 0,
                 data_dir: Optional[str | Path] = None, *, access_log: bool = False,
                 retention: Optional[float] = None) -> None:
        self.engine = engine
        self.faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self.host, self.port = host, int(port)
        self.access_log = access_log
        self._dir = Path(tempfile.mkdtemp(prefix="pdbatch-server-") if data_dir is None
                         else data_dir)
        # a temporary data_dir goes with stop(), or with the object if never stopped
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._dir), True) \
            if data_dir is None else None
        self._store = Store(self._dir, now=self._now, retention=retention)
        self._worker: Optional[BatchWorker] = None
        self._uvicorn: Any = None
        self._thread: Optional[threading.Thread] = None
        self._url_host: Optional[str] = None
        self.app = build_app(self)

    def _now(self) -> float:
        """The server's clock: wall time plus ``faults.time_shift``."""
        return time.time() + self.faults.time_shift

    # -- public API ----------------------------------------------------------
    @property
    def files(self) -> dict:
        """File objects by id (the JSON the API returns)."""
        return self._store.files

    @property
    def batches(self) -> dict:
        """Batch objects by id (the JSON the API returns)."""
        return self._store.batches

    def file_path(self, file_id: str) -> Optional[Path]:
        """Where the content of file ``file_id`` is on disk (an upload, or a batch's output or error file), or None."""
        return self._store.path(file_id)

    @property
    def running(self) -> bool:
        """Whether the server accepts connections."""
        return bool(self._thread is not None and self._thread.is_alive()
                    and self._uvicorn.started and not self._uvicorn.should_exit)

    @property
    def data_dir(self) -> Path:
        """The server's directory: uploads as ``data_dir / <file id>``, batches' answers under it (see :meth:`file_path`)."""
        return self._dir

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

        sock = None
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
            # proto must be IPPROTO_TCP so that asyncio sets TCP_NODELAY on accepted
            # connections; otherwise each small response waits ~40 ms (Nagle + delayed ACK)
            sock = socket.socket(family, kind, proto)
            if os.name != "nt":  # on Windows it would let two servers share a port
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
        except OSError as exc:
            if sock is not None:
                sock.close()
            self.stop()
            raise ServerError(f"cannot listen on {self.host}:{self.port}: {exc}; choose "
                              "another port (port=0 picks a free one)") from exc
        bound, self.port = sock.getsockname()[:2]
        # a numeric address for clients: the one bound ("localhost" may resolve to
        # another family first), loopback for the wildcard addresses
        self._url_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound, bound)
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", lifespan="off",
                                access_log=False, ws="none",  # the gate logs requests
                                timeout_graceful_shutdown=2, timeout_keep_alive=5)
        self._uvicorn = _uvicorn_server(config)
        self._worker = BatchWorker(self._store, self)
        self._worker.resume()  # batches that had not ended when the last server stopped
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
        self.anthropic_batches.resume()  # Message Batches that had not ended (their threads need a running server)
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
        self.anthropic_batches.join(timeout)  # a Message Batch being run writes no more (it resumes at the next start)
        self._store.close()
        if self._cleanup is not None:
            self._cleanup()

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
        return f"BatchServer({self.base_url!r}, {'running' if self.running else 'stopped'})"

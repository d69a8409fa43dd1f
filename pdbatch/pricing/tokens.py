"""Token counting, one place for pdbatch: estimates, cost and rate limits.

tiktoken counts exactly when its encoding can be loaded; it downloads the
encoding on first use, so offline (and without a copy in
``TIKTOKEN_CACHE_DIR``) the counter falls back to about four characters per
token and says so. Loading is tried once per process and bounded in time.
``PDBATCH_TOKENIZER=heuristic`` skips tiktoken.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import orjson

__all__ = ["TokenCounter", "token_counter", "encoding_name", "body_tokens", "CHARS_PER_TOKEN", "IMAGE_TOKENS",
           "IMAGE_TOKENS_LOW", "MESSAGE_OVERHEAD", "REQUEST_OVERHEAD", "unavailable_encodings", "assume_unavailable"]

#: Characters per token of the fallback counter (a rule of thumb for English text).
CHARS_PER_TOKEN = 4
#: Flat token estimate of one image: gpt-4o's rule for a 1024x1024 image at high
#: detail (85 base + 4 tiles of 170). Real counts depend on size and model:
#: gpt-4o-mini bills images at many times more tokens (at a lower price per token).
IMAGE_TOKENS = 765
#: An image sent with ``detail="low"``: the base 85 tokens.
IMAGE_TOKENS_LOW = 85
#: Tokens each chat message adds around its content (role, separators).
MESSAGE_OVERHEAD = 3
#: Tokens each chat request adds to prime the reply.
REQUEST_OVERHEAD = 3


_O200K = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
_ENCODINGS: Dict[str, Tuple[Any, Optional[str]]] = {}
_ENC_LOCK = threading.Lock()
#: Seconds to wait for tiktoken to load (it may try to download) before falling back.
LOAD_TIMEOUT = 5.0


def encoding_name(model: Optional[str]) -> str:
    """tiktoken encoding of a model family.

    Examples
    --------
    >>> encoding_name("gpt-4.1-mini"), encoding_name("text-embedding-3-small")
    ('o200k_base', 'cl100k_base')
    """
    return "o200k_base" if (model or "").strip().lower().startswith(_O200K) else "cl100k_base"


def _load_encoding(name: str) -> Tuple[Any, Optional[str]]:
    """``(encoding, None)`` or ``(None, why not)``; tried once per process, bounded in time."""
    with _ENC_LOCK:
        if name in _ENCODINGS:
            return _ENCODINGS[name]
        try:
            import tiktoken
        except ImportError:
            _ENCODINGS[name] = (None, "tiktoken is not installed")
            return _ENCODINGS[name]
        box: Dict[str, Any] = {}

        def load() -> None:
            try:
                box["enc"] = tiktoken.get_encoding(name)
            except Exception as err:  # no network, no cached file, a broken cache...
                box["err"] = type(err).__name__

        t = threading.Thread(target=load, name=f"pdbatch-tiktoken-{name}", daemon=True)
        t.start()
        t.join(LOAD_TIMEOUT)
        if "enc" in box:
            _ENCODINGS[name] = (box["enc"], None)
        else:
            why = box.get("err") or f"no answer within {LOAD_TIMEOUT:g} s"
            _ENCODINGS[name] = (None, f"tiktoken could not load {name} ({why}: it downloads the encoding on "
                                      f"first use; a copy in TIKTOKEN_CACHE_DIR gives exact counts offline)")
        return _ENCODINGS[name]


def unavailable_encodings() -> Dict[str, str]:
    """The encodings this process tried and could not load, with why: to hand to other processes.

    A process given them (:func:`assume_unavailable`), e.g. a Dask worker,
    counts as this one does at once instead of trying to download them.
    """
    with _ENC_LOCK:
        return {name: why for name, (enc, why) in _ENCODINGS.items() if enc is None and why}


def assume_unavailable(found: Mapping[str, str]) -> None:
    """Take another process's :func:`unavailable_encodings`: those are not tried here (no download attempt).

    Encodings this process has loaded or given up on already keep their state.
    """
    with _ENC_LOCK:
        for name, why in found.items():
            _ENCODINGS.setdefault(name, (None, why))


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens of text; ``name`` and ``note`` say how."""

    name: str
    note: str
    encode: Optional[Callable[[str], List[int]]] = None

    @property
    def exact(self) -> bool:
        return self.encode is not None

    def count(self, text: Optional[str]) -> int:
        if not text:
            return 0
        if self.encode is not None:
            return len(self.encode(text))
        return math.ceil(len(text) / CHARS_PER_TOKEN)


def token_counter(model: Optional[str]) -> TokenCounter:
    """tiktoken for ``model`` if its encoding loads, else the characters/4 heuristic.

    ``PDBATCH_TOKENIZER=heuristic`` skips tiktoken.

    Examples
    --------
    >>> os.environ["PDBATCH_TOKENIZER"] = "heuristic"
    >>> token_counter("gpt-4o").count("twelve chars")
    3
    >>> del os.environ["PDBATCH_TOKENIZER"]
    """
    enc_name = encoding_name(model)
    heuristic = f"heuristic: ~{CHARS_PER_TOKEN} characters per token"
    if os.environ.get("PDBATCH_TOKENIZER", "").strip().lower() == "heuristic":
        return TokenCounter("heuristic", f"{heuristic} (PDBATCH_TOKENIZER=heuristic)")
    enc, why = _load_encoding(enc_name)
    if enc is None:
        return TokenCounter("heuristic", f"{heuristic}; {why}")
    return TokenCounter(f"tiktoken {enc_name}", f"counted with tiktoken {enc_name}", enc.encode_ordinary)


def body_tokens(body: Mapping[str, Any], count: Callable[[Optional[str]], int], memo: Optional[Dict[int, Any]] = None):
    """``(text tokens, images, image tokens)`` of one request body (chat, responses or embeddings).

    ``memo`` keeps the token count of a shared ``response_format`` between calls.
    """
    memo = {} if memo is None else memo
    tokens = images = image_tokens = 0
    messages = body.get("messages")
    responses = messages is None and isinstance(body.get("input"), list) and \
        all(isinstance(m, Mapping) for m in body["input"])
    if responses:  # a Responses body: instructions, then input items (see pdbatch.core.endpoints)
        messages = ([{"content": body["instructions"]}] if body.get("instructions") is not None else []) + body["input"]
    if messages is not None:
        tokens += REQUEST_OVERHEAD
        for msg in messages:
            tokens += MESSAGE_OVERHEAD
            content = msg.get("content")
            if isinstance(content, str):
                tokens += count(content)
                continue
            for part in content or ():
                if part.get("type") in ("text", "input_text"):
                    tokens += count(part.get("text"))
                elif part.get("type") in ("image_url", "input_image"):
                    images += 1
                    img = part.get("image_url")
                    low = (img.get("detail") if isinstance(img, Mapping) else part.get("detail")) == "low"
                    image_tokens += IMAGE_TOKENS_LOW if low else IMAGE_TOKENS
        rf = body.get("response_format") or (body.get("text") or {}).get("format")
        if isinstance(rf, Mapping) and rf.get("type") == "json_schema":
            # The API puts the schema into the prompt; its JSON text is a fair approximation.
            if id(rf) not in memo:
                memo[id(rf)] = (rf, count(orjson.dumps(rf.get("json_schema") or rf.get("schema")).decode()))
            tokens += memo[id(rf)][1]
    elif "input" in body:
        inp = body["input"]
        for text in [inp] if isinstance(inp, str) else inp:
            tokens += count(text) if isinstance(text, str) else len(text)  # a list of token ids
    return tokens, images, image_tokens

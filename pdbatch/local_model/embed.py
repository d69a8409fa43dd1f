"""Local embeddings: llama.cpp's embedding mode on a GGUF model.

:class:`LocalEmbedder` answers an OpenAI ``/v1/embeddings`` request body with
the mean of the model's last hidden states over the text's tokens (mean
pooling), scaled to unit length as OpenAI's vectors are, as float32. Each text
is evaluated on its own, so a text's vector never depends on the other texts
of the request: identical texts give identical vectors, run after run.

On the shipped SmolLM2-135M-Instruct (a chat model, 576 dimensions) this
proves a pipeline offline; it is not a retrieval model. Give an embedding
GGUF with ``pdbatch.Local(model="...gguf")`` for useful vectors.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import Any, List, Mapping

import numpy as np

from ..errors import BackendUnavailableError, InputError

__all__ = ["LocalEmbedder"]


class LocalEmbedder:
    """One llama.cpp context in embedding mode (mean pooling), one text at a time.

    Parameters
    ----------
    path : str
        A GGUF model file.
    n_threads : int
        CPU threads.
    n_ctx : int
        Longest text in tokens.

    Examples
    --------
    >>> e = LocalEmbedder(default_model_path())                           # doctest: +SKIP
    >>> len(e.embed({"input": "hello"})["data"][0]["embedding"])           # doctest: +SKIP
    576
    """

    def __init__(self, path: str, n_threads: int = 1, n_ctx: int = 2048):
        try:
            import llama_cpp
        except ImportError as err:
            raise BackendUnavailableError("the local model needs llama-cpp-python: pip install 'pdbatch[local]'") from err
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.n_ctx = int(n_ctx)
        self._lock = threading.Lock()
        self._llama = llama_cpp.Llama(
            model_path=path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=self.n_ctx, n_batch=self.n_ctx, n_ubatch=self.n_ctx,
            n_threads=int(n_threads), n_threads_batch=int(n_threads), verbose=False)

    @property
    def dimensions(self) -> int:
        """Length of every vector."""
        return int(self._llama.n_embd())

    def vector(self, text: str) -> "tuple[np.ndarray, int]":
        """The unit-length float32 vector of ``text`` and its token count.

        Raises
        ------
        ValueError
            For a text longer than the context window.
        """
        with self._lock:
            n = len(self._llama.tokenize(text.encode("utf-8")))
            if n > self.n_ctx:
                raise ValueError(f"Requested tokens ({n}) exceed context window of {self.n_ctx}")
            out = self._llama.embed(text, normalize=False, truncate=False)
        vec = np.asarray(out[0] if out and isinstance(out[0], list) else out, dtype=np.float32)
        norm = np.float32(np.linalg.norm(vec))
        return (vec / norm if norm > 0 else vec).astype(np.float32), n

    def embed(self, body: Mapping[str, Any]) -> dict:
        """Answer an OpenAI embeddings request body (``input`` a string or a list of strings).

        ``encoding_format`` ``"base64"`` gives little-endian float32 bytes in
        base64, as the API does; ``dimensions`` must be the model's own, if given.

        Raises
        ------
        InputError
            For a missing or non-text ``input``, or other ``dimensions``.
        ValueError
            For a text longer than the context window.
        """
        raw = body.get("input")
        texts: List[Any] = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError("the embeddings body needs 'input': a string or a list of strings")
        dims = body.get("dimensions")
        if dims is not None and dims != self.dimensions:
            raise InputError(f"dimensions={dims!r}: {self.name} gives vectors of {self.dimensions} only; "
                             "leave dimensions out")
        b64 = body.get("encoding_format") == "base64"
        data, tokens = [], 0
        for i, text in enumerate(texts):
            vec, n = self.vector(text)
            tokens += n
            emb = base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii") if b64 else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": self.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

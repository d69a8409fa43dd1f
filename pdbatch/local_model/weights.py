"""The batched engine's weights: the shipped Q4_1 matrices as F16, which llama.cpp multiplies fast in batches.

llama.cpp's CPU backend multiplies a Q4_1 matrix by a batch of rows one row
at a time (each row's activations quantized to Q8_1, then a dot product per
weight row): sixteen rows in one pass cost nearly sixteen times one row.
F16 matrices go through its tiled matrix-matrix kernel (llamafile's
``sgemm``), which reads each weight once for the whole batch. Measured on
this project's 2-core machine (``llama_decode`` CPU time per token, one
thread, SmolLM2-135M): Q4_1 13.5 ms for one row, 9-10 ms a row in passes of
16; F16 14.2 ms for one row, 6.1-6.7 ms a row in passes of 16.

:func:`batch_weights` converts a Q4_1 GGUF file once into an F16 copy
(llama.cpp's own ``llama_model_quantize``, about a second and 270 MB for
SmolLM2-135M) kept in :func:`cache_dir`, and returns its path; any other
file is returned as it is. The F16 copy holds the same weights: each Q4_1
value ``d * q + m`` rounded to the nearest f16 (a relative error under
2^-11); the Q4_1 path itself rounds the activations to 8 bits, so the two
give close, not identical, logits, and at temperature 0 a near tie can pick
another token.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import threading
from typing import Iterator, Optional

__all__ = ["cache_dir", "file_type", "batch_weights", "CACHE_ENV"]

#: Environment variable naming the directory of converted models (default ``~/.cache/pdbatch/models``).
CACHE_ENV = "PDBATCH_MODEL_CACHE"
_LOCK = threading.Lock()


def cache_dir() -> str:
    """Where converted model files are kept: ``$PDBATCH_MODEL_CACHE``, else ``$XDG_CACHE_HOME/pdbatch/models``.

    Examples
    --------
    >>> cache_dir().endswith("models") or "PDBATCH_MODEL_CACHE" in os.environ
    True
    """
    given = os.environ.get(CACHE_ENV)
    if given:
        return os.path.abspath(os.path.expanduser(given))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pdbatch", "models")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """llama.cpp's log lines below errors unprinted (llama-cpp-python prints them to stderr by its logger's level)."""
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(level)


def file_type(path: str) -> Optional[int]:
    """The GGUF file's ``general.file_type`` (a ``LLAMA_FTYPE_*`` number), read without loading its weights."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with _quiet():
        model = llama_cpp.llama_model_load_from_file(path.encode("utf-8"), params)
    if not model:
        return None
    try:
        buf = ctypes.create_string_buffer(32)
        n = llama_cpp.llama_model_meta_val_str(model, b"general.file_type", buf, len(buf))
        return int(buf.value.decode()) if n > 0 else None
    except ValueError:
        return None
    finally:
        llama_cpp.llama_model_free(model)


def batch_weights(path: str) -> str:
    """``path``, or for a Q4_1 file the path of its F16 copy (made on first use; see the module docstring).

    Raises
    ------
    OSError
        When the copy cannot be written (the caller may fall back to ``path``).
    """
    import llama_cpp

    if file_type(path) != llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1:
        return path
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(cache_dir(), f"{stem}.f16-{key}.gguf")
    with _LOCK:
        if os.path.isfile(out):
            return out
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = f"{out}.{os.getpid()}.tmp"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
        params.allow_requantize = True  # the Q4_1 values are read back (dequantized), then stored as f16
        params.nthread = 1
        try:
            with _quiet():
                rc = llama_cpp.llama_model_quantize(path.encode("utf-8"), tmp.encode("utf-8"), params)
            if rc != 0:
                raise OSError(f"llama.cpp could not convert {path} to F16 (code {rc})")
            os.replace(tmp, out)  # whole or not at all, also when two processes convert at once
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out

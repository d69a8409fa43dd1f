"""Choosing each next token of one sequence of the batched engine.

:class:`SeqSampler` picks tokens as llama-cpp-python's
``create_chat_completion`` does for the same request (its sampler chain:
repetition penalties, then the grammar, then greedy at temperature 0, or
``top_k``, ``typical_p``, ``top_p``, ``min_p``, temperature and a seeded draw),
with the same result, but without running the grammar over the whole
vocabulary at every step, which is what makes grammar-constrained decoding
slow (each of the ~49,000 candidate tokens is matched against the grammar):

* at temperature 0 the best token is checked alone; if the grammar refuses
  it, the best :data:`TOP_N` are checked, and only when none of them fits
  does the grammar see every token. The first candidate that fits is the
  token the whole-vocabulary chain would pick, so answers do not change;
* when sampling with ``top_k = k``, the best ``max(TOP_N, 2k)`` tokens go
  through the grammar; when at least ``k`` of them fit, they are the same
  ``k`` tokens the chain would keep, and the rest of the chain runs on them.

The penalties are applied to the logits in NumPy, with llama.cpp's formula
(over the last ``penalty_last_n`` tokens of the answer).
"""

from __future__ import annotations

import ctypes
from collections import Counter, deque
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["TOP_N", "PENALTY_LAST_N", "SeqSampler"]

#: Candidates checked against the grammar before falling back to the whole vocabulary.
TOP_N = 64
#: Answer tokens the repetition penalties look back over (llama-cpp-python's default).
PENALTY_LAST_N = 64

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


def _lib():
    import llama_cpp

    return llama_cpp


class _Candidates:
    """A NumPy array of ``llama_token_data`` and the ``llama_token_data_array`` describing it."""

    def __init__(self, ids: np.ndarray, logits: np.ndarray):
        lib = _lib()
        self.data = np.empty(len(ids), dtype=_TOKEN_DATA)
        self.data["id"] = ids
        self.data["logit"] = logits
        self.data["p"] = 0.0
        self.c = lib.llama_token_data_array(
            data=self.data.ctypes.data_as(ctypes.POINTER(lib.llama_token_data)),
            size=len(ids), selected=-1, sorted=False,
        )

    def apply(self, smpl) -> None:
        _lib().llama_sampler_apply(smpl, ctypes.byref(self.c))

    def allowed(self) -> np.ndarray:
        """Indices of the candidates the last sampler left a finite logit (in array order)."""
        return np.flatnonzero(np.isfinite(self.data["logit"][: self.c.size]))

    def selected(self) -> int:
        """The token the last sampler chose (the chain may have moved ``data``)."""
        return int(self.c.data[self.c.selected].id)


class SeqSampler:
    """The sampling state of one sequence: penalties' history, grammar, chain.

    Parameters
    ----------
    vocab
        The model's ``llama_vocab`` pointer.
    n_vocab : int
        Vocabulary size.
    params : dict
        :func:`~pdbatch.local_model.llama.translate_body` output (``temperature``,
        ``top_k``, ``repeat_penalty``, ``seed``...).
    grammar
        A fresh ``llama_sampler`` of the answer's grammar (owned and freed by
        this object), or None.
    """

    def __init__(self, vocab, n_vocab: int, params: Dict[str, Any], grammar=None):
        lib = _lib()
        self.n_vocab = int(n_vocab)
        self.grammar = grammar
        self.temp = float(params.get("temperature", 0.8))
        self.top_k = int(params.get("top_k", 40))
        self.repeat = float(params.get("repeat_penalty", 1.0))
        self.freq = float(params.get("frequency_penalty", 0.0) or 0.0)
        self.present = float(params.get("presence_penalty", 0.0) or 0.0)
        self.history: deque = deque(maxlen=PENALTY_LAST_N)
        mirostat = int(params.get("mirostat_mode", 0) or 0)
        seed = int(params.get("seed", 0)) & 0xFFFFFFFF
        self.greedy = self.temp == 0.0
        self.exact_top_k = self.temp > 0.0 and mirostat == 0 and self.top_k > 0
        self.chain = None
        if not self.greedy:
            self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
            add = lambda s: lib.llama_sampler_chain_add(self.chain, s)  # noqa: E731
            if self.temp < 0.0:
                add(lib.llama_sampler_init_dist(seed))
            elif mirostat == 1:
                add(lib.llama_sampler_init_mirostat(self.n_vocab, seed, float(params.get("mirostat_tau", 5.0)),
                                                    float(params.get("mirostat_eta", 0.1)), 100))
            elif mirostat == 2:
                add(lib.llama_sampler_init_mirostat_v2(seed, float(params.get("mirostat_tau", 5.0)),
                                                       float(params.get("mirostat_eta", 0.1))))
            else:
                add(lib.llama_sampler_init_top_k(self.top_k))
                add(lib.llama_sampler_init_typical(float(params.get("typical_p", 1.0)), 1))
                add(lib.llama_sampler_init_top_p(float(params.get("top_p", 0.95)), 1))
                add(lib.llama_sampler_init_min_p(float(params.get("min_p", 0.05)), 1))
                add(lib.llama_sampler_init_temp(self.temp))
                add(lib.llama_sampler_init_dist(seed))

    # ------------------------------------------------------------- penalties
    def _penalised(self, logits: np.ndarray) -> np.ndarray:
        out = np.array(logits, dtype=np.float32, copy=True)
        if not self.history or (self.repeat == 1.0 and self.freq == 0.0 and self.present == 0.0):
            return out
        counts = Counter(self.history)
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        vals = out[ids]
        rep = np.float32(self.repeat)
        vals = np.where(vals <= 0, vals * rep, vals / rep).astype(np.float32)
        vals = vals - (n * np.float32(self.freq) + np.float32(1.0) * np.float32(self.present))
        out[ids] = vals
        return out

    # -------------------------------------------------------------- sampling
    def sample(self, logits: np.ndarray) -> int:
        """The next token for these logits (a view of llama.cpp's output row); then :meth:`accept` it."""
        z = self._penalised(logits)
        if self.greedy:
            token = self._greedy(z)
        elif self.exact_top_k and self.grammar is not None:
            token = self._top_k(z)
        else:
            token = self._full(z)
        return token

    def _check(self, ids: np.ndarray, z: np.ndarray) -> _Candidates:
        cand = _Candidates(ids, z[ids])
        if self.grammar is not None:
            cand.apply(self.grammar)
        return cand

    def _best(self, z: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` highest-logit token ids, best first (ties: lower id first, as llama.cpp's greedy)."""
        n = min(n, self.n_vocab)
        part = np.argpartition(-z, n - 1)[:n] if n < self.n_vocab else np.arange(self.n_vocab)
        return part[np.lexsort((part, -z[part]))]

    def _greedy(self, z: np.ndarray) -> int:
        best = int(np.argmax(z))
        if self.grammar is None:
            return best
        if self._check(np.array([best]), z).allowed().size:
            return best
        ids = self._best(z, TOP_N)
        ok = self._check(ids, z).allowed()
        if ok.size:
            return int(ids[ok[0]])
        full = self._check(np.arange(self.n_vocab), z)
        return int(np.argmax(full.data["logit"]))

    def _top_k(self, z: np.ndarray) -> int:
        ids = self._best(z, max(TOP_N, 2 * self.top_k))
        cand = self._check(ids, z)
        ok = cand.allowed()
        if ok.size >= self.top_k:
            kept = _Candidates(ids[ok], cand.data["logit"][ok])
            kept.apply(self.chain)
            return kept.selected()
        return self._full(z)

    def _full(self, z: np.ndarray) -> int:
        cand = self._check(np.arange(self.n_vocab), z)
        if self.chain is None:
            return int(np.argmax(cand.data["logit"]))
        cand.apply(self.chain)
        return cand.selected()

    def accept(self, token: int, eog: bool = False) -> None:
        """Record ``token`` as written (the grammar is not told of an end-of-generation token)."""
        lib = _lib()
        self.history.append(int(token))
        if self.grammar is not None and not eog:
            lib.llama_sampler_accept(self.grammar, int(token))
        if self.chain is not None:
            lib.llama_sampler_accept(self.chain, int(token))

    def close(self) -> None:
        """Free the llama.cpp samplers (safe to call twice)."""
        lib = _lib()
        for name in ("grammar", "chain"):
            smpl = getattr(self, name)
            if smpl is not None:
                lib.llama_sampler_free(smpl)
                setattr(self, name, None)

    def __del__(self):  # pragma: no cover - garbage collection
        try:
            self.close()
        except Exception:
            pass


def grammar_sampler(vocab, text: str, cache: Optional[dict] = None):
    """A fresh grammar sampler for GBNF ``text`` (root rule ``root``), cloned from a cached parse.

    Raises
    ------
    ValueError
        When llama.cpp cannot parse the grammar.
    """
    lib = _lib()
    proto = cache.get(text) if cache is not None else None
    if proto is None:
        proto = lib.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
        if not proto:
            raise ValueError("llama.cpp could not parse the answer's grammar")
        if cache is None:
            return proto
        cache[text] = proto
    return lib.llama_sampler_clone(proto)

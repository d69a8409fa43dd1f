"""The batched local engine: several rows per forward pass of llama.cpp.

On a CPU a 135M model reads all its weights for every forward pass, whether
the pass carries one token or sixteen. :class:`BatchedModel` keeps up to
``slots`` answers in progress in one llama.cpp context, one *sequence* each,
and decodes one token of every answer (and any prompt tokens waiting) in the
same ``llama_decode`` call, through llama-cpp-python's low-level API
(``llama_batch`` with a ``seq_id`` per token, a unified KV cache).

* **Shared prefix.** Rows of one job share their start (chat template, system
  prompt, the schema's instructions). Sequence 0 keeps the KV cache of that
  prefix; a new row copies it (``llama_memory_seq_cp``, which in a unified
  cache only tags the cells) and evaluates only its own tokens. The prefix is
  the longest common start of the prompts seen: the first row's prompt, cut
  back to what the next row shares.
* **Per-sequence sampling.** Each row has its own grammar, penalties, seed,
  ``stop`` strings and ``max_tokens``
  (:class:`~pdbatch.local_model.sampler.SeqSampler`: same choices as
  ``create_chat_completion``, the grammar checked on the best candidates first).
* **Interface.** :meth:`BatchedModel.complete` is :meth:`LocalModel.complete
  <pdbatch.local_model.llama.LocalModel.complete>`, callable from many threads
  at once: each call queues its row and waits; one scheduler thread runs the
  context. Rows are admitted while slots and KV cells remain, so a new row
  starts while others are half-way through.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from typing import Any, List, Mapping, Optional

import numpy as np

from ..errors import BackendUnavailableError
from .llama import common_prefix, translate_body
from .sampler import SeqSampler, grammar_sampler
from .weights import batch_weights

__all__ = ["DEFAULT_SLOTS", "BatchedModel"]

#: Answers one context decodes together by default.
DEFAULT_SLOTS = 16
#: Shortest common start worth keeping in sequence 0, in tokens.
MIN_SHARED = 8
_ROOT = 0
_N_BATCH = 512


class _Seq:
    """One answer in progress."""

    def __init__(self, prompt: List[int], max_tokens: int, stop: List[bytes], params: dict, grammar: Optional[str]):
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.stop = stop
        self.params = params
        self.grammar = grammar
        self.sampler: Optional[SeqSampler] = None
        self.sid = -1
        self.shared = 0          # prompt tokens taken from sequence 0
        self.todo: List[int] = []  # tokens to feed next
        self.n_past = 0
        self.out: List[int] = []
        self.text = b""
        self.finish = "length"
        self.error: Optional[BaseException] = None
        self.done = threading.Event()

    @property
    def reserve(self) -> int:
        return len(self.prompt) - self.shared + self.max_tokens


class BatchedModel:
    """One llama.cpp context decoding up to ``slots`` chat answers at once.

    Parameters
    ----------
    path : str
        A GGUF model file.
    n_threads : int
        CPU threads of the context.
    n_ctx : int
        Context window of one answer (prompt plus answer), as for
        :class:`~pdbatch.local_model.llama.LocalModel`.
    seed : int
        Sampling seed of requests that give none.
    slots : int
        Answers decoded together (default :data:`DEFAULT_SLOTS`).
    kv_size : int, optional
        KV cells shared by all answers and the prefix (default
        ``n_ctx + 256 * slots``: 16 rows of the main job, whose rows reserve
        their prompt and ``max_tokens`` 256); a row waits for cells to free up.
    flash_attn : bool
        llama.cpp's flash attention, which skips the cells of the other
        answers instead of multiplying them by zero (default True: measured
        1.5x faster passes with 4 answers in progress;
        :class:`~pdbatch.local_model.llama.LocalModel` runs without it, and
        ``slots=1, flash_attn=False`` gives its answers exactly).
    f16 : bool
        Run a Q4_1 file's F16 copy (:func:`~pdbatch.local_model.weights.batch_weights`:
        the same weights, multiplied many rows at a time; default False, the file as it is).

    Examples
    --------
    >>> m = BatchedModel(default_model_path(), slots=4)                    # doctest: +SKIP
    >>> m.complete({"messages": [{"role": "user", "content": "Hi"}]})["object"]  # doctest: +SKIP
    'chat.completion'
    """

    def __init__(self, path: str, n_threads: int = 1, n_ctx: int = 2048, seed: int = 0,
                 slots: int = DEFAULT_SLOTS, kv_size: Optional[int] = None, flash_attn: bool = True, f16: bool = False):
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as err:
            raise BackendUnavailableError("the local model needs llama-cpp-python: pip install 'pdbatch[local]'") from err
        self._lib = llama_cpp
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0]
        if f16:
            try:
                path = batch_weights(path)
            except OSError as err:  # no room for the copy: the file as it is, slower in batches
                logging.getLogger("pdbatch").warning("pdbatch: running %s as it is: %s", self.name, err)
        self.weights = path
        self.n_threads, self.n_ctx, self.seed, self.slots = int(n_threads), int(n_ctx), int(seed), int(slots)
        self.kv_size = int(kv_size or self.n_ctx + 256 * self.slots)
        # the Llama object loads the weights and gives the tokenizer; its own context stays tiny and idle
        self._llama = llama_cpp.Llama(model_path=path, n_threads=self.n_threads, n_threads_batch=self.n_threads,
                                      n_ctx=64, n_batch=64, verbose=False)
        template = self._llama.metadata.get("tokenizer.chat_template")
        if self._llama.chat_format != "chat_template.default" or not template:
            raise BackendUnavailableError(f"{self.name} has no chat template of its own; the batched engine needs one")
        model = self._llama._model
        eos, bos = self._llama.token_eos(), self._llama.token_bos()
        self._format = Jinja2ChatFormatter(
            template=template, eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
        self._vocab = model.vocab
        self.n_vocab = int(self._llama.n_vocab())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.kv_size
        params.n_batch = params.n_ubatch = _N_BATCH
        params.n_seq_max = self.slots + 1
        params.n_threads = params.n_threads_batch = self.n_threads
        params.kv_unified = True
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self._ctx:
            raise BackendUnavailableError(f"llama.cpp could not create a context of {self.kv_size} cells for {self.name}")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(_N_BATCH, 0, 1)
        self._grammars: dict = {}
        self._grammar_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: "collections.deque[_Seq]" = collections.deque()
        self._active: List[_Seq] = []
        self._free_ids = list(range(self.slots, 0, -1))
        self._root: List[int] = []
        self._root_from: Optional[_Seq] = None
        self._closed = False
        #: where the scheduler's time goes: llama_decode calls, tokens they carried, tokens sampled, seconds,
        #: and the most rows one call carried
        self.stats = {"steps": 0, "batch_tokens": 0, "sampled": 0, "decode_s": 0.0, "sample_s": 0.0, "peak_rows": 0}
        self._thread = threading.Thread(target=self._loop, name=f"pdbatch-batched-{self.name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- callers
    def complete(self, body: Mapping[str, Any], schema: Optional[Mapping[str, Any]] = None) -> dict:
        """Answer one chat request body; same contract as :meth:`LocalModel.complete`. Thread-safe."""
        return self.complete_many([body], schema)[0]

    def complete_many(self, bodies: List[Mapping[str, Any]], schema: Optional[Mapping[str, Any]] = None) -> List[dict]:
        """Answer several bodies, queued together in this order; a body that fails raises (the first failure).

        Rows queued together on an idle model run in the same order of
        forward passes every time, so their answers repeat exactly.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        seqs = [self._prepare(b, schema) for b in bodies]
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            self._queue.extend(seqs)
            self._cond.notify()
        for seq in seqs:
            seq.done.wait()
        for seq in seqs:
            if seq.error is not None:
                raise seq.error
        return [self._response(seq) for seq in seqs]

    def _prepare(self, body: Mapping[str, Any], schema: Optional[Mapping[str, Any]]) -> _Seq:
        kw = translate_body(body, schema)
        kw.setdefault("seed", self.seed)
        fmt = self._format(messages=kw["messages"])
        prompt = self._llama.tokenize(fmt.prompt.encode("utf-8"), add_bos=not fmt.added_special, special=True)
        if len(prompt) >= self.n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {self.n_ctx}")
        limit = kw.get("max_tokens")
        if limit is None or limit <= 0 or limit + len(prompt) >= self.n_ctx:
            limit = self.n_ctx - len(prompt)
        stops = list(kw.get("stop") or []) + list(fmt.stop if isinstance(fmt.stop, list) else [fmt.stop] if fmt.stop else [])
        seq = _Seq(prompt, int(limit), [s.encode("utf-8") for s in stops if s], kw, kw.get("grammar"))
        grammar = None
        if seq.grammar is not None:
            with self._grammar_lock:  # parsed once per grammar, in the caller's thread
                grammar = grammar_sampler(self._vocab, seq.grammar, self._grammars)
        seq.sampler = SeqSampler(self._vocab, self.n_vocab, kw, grammar)
        return seq

    def _response(self, seq: _Seq) -> dict:
        prompt, completion = len(seq.prompt), len(seq.out)
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": seq.text.decode("utf-8", errors="ignore"), "refusal": None},
                "logprobs": None,
                "finish_reason": seq.finish,
            }],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": seq.shared},
            },
        }

    # -------------------------------------------------------------- scheduler
    def close(self) -> None:
        """Stop the scheduler once the answers in progress are done, and free the context (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join()
        self._lib.llama_batch_free(self._batch)
        self._lib.llama_free(self._ctx)
        for proto in self._grammars.values():
            self._lib.llama_sampler_free(proto)
        self._grammars.clear()
        self._llama.close()

    def _loop(self) -> None:
        while self._admit():
            try:
                t0 = time.perf_counter()
                outputs = self._fill()
                n = self._batch.n_tokens
                rc = self._lib.llama_decode(self._ctx, self._batch)
                if rc != 0:
                    raise RuntimeError(f"llama_decode failed with code {rc} ({len(self._active)} answers in progress)")
                t1 = time.perf_counter()
                self._sample(outputs)
                st = self.stats
                st["steps"] += 1
                st["peak_rows"] = max(st["peak_rows"], len(outputs))
                st["batch_tokens"] += n
                st["sampled"] += len(outputs)
                st["decode_s"] += t1 - t0
                st["sample_s"] += time.perf_counter() - t1
            except Exception as err:  # fail the rows in progress, keep serving
                for seq in list(self._active):
                    seq.error = err
                    self._finish(seq)
                self._lib.llama_memory_clear(self._mem, True)
                self._root, self._root_from = [], None

    def _used(self) -> int:
        return len(self._root) + sum(s.reserve for s in self._active)

    def _admit(self) -> bool:
        """Start queued rows while slots and cells allow; False once closed and idle."""
        with self._cond:
            while not self._active and not self._queue:
                if self._closed:
                    return False
                self._cond.wait()
            while self._queue and self._free_ids:
                seq = self._queue[0]
                shared = min(common_prefix(self._root, seq.prompt), len(seq.prompt) - 1)
                if shared < MIN_SHARED and self._root_from is not None:
                    if common_prefix(self._root_from.prompt, seq.prompt) >= MIN_SHARED:
                        break  # the prefix this row shares is being computed: take it next step
                    shared = 0
                elif shared < MIN_SHARED:
                    shared = 0
                seq.shared = shared
                if self._used() + seq.reserve > self.kv_size:
                    if self._active:
                        break  # wait for cells to free up
                    self._drop_root()
                self._queue.popleft()
                self._start(seq)
            return True

    def _drop_root(self) -> None:
        self._lib.llama_memory_seq_rm(self._mem, _ROOT, -1, -1)
        self._root = []

    def _start(self, seq: _Seq) -> None:
        seq.sid = self._free_ids.pop()
        if seq.shared:
            if seq.shared < len(self._root):
                self._lib.llama_memory_seq_rm(self._mem, _ROOT, seq.shared, -1)
                self._root = self._root[:seq.shared]
            self._lib.llama_memory_seq_cp(self._mem, _ROOT, seq.sid, 0, seq.shared)
        elif self._root_from is None and len(seq.prompt) > MIN_SHARED:
            self._drop_root()
            self._root_from = seq  # its prompt becomes the prefix once evaluated
        seq.n_past = seq.shared
        seq.todo = seq.prompt[seq.shared:]
        self._active.append(seq)

    def _fill(self) -> List[tuple]:
        """Put the next tokens of every answer in the batch; return (seq, batch index) of the logits wanted."""
        b = self._batch
        n, outputs = 0, []
        # answers being written first (one token each), then prompts in as far as room allows
        for seq in sorted(self._active, key=lambda s: len(s.todo) > 1):
            take = min(len(seq.todo), _N_BATCH - n)
            if take <= 0:
                break
            for k in range(take):
                b.token[n] = seq.todo[k]
                b.pos[n] = seq.n_past + k
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq.sid
                b.logits[n] = 0
                n += 1
            seq.n_past += take
            seq.todo = seq.todo[take:]
            if not seq.todo:
                b.logits[n - 1] = 1
                outputs.append((seq, n - 1))
        b.n_tokens = n
        return outputs

    def _sample(self, outputs: List[tuple]) -> None:
        lib = self._lib
        for seq, i in outputs:
            if seq is self._root_from:
                lib.llama_memory_seq_cp(self._mem, seq.sid, _ROOT, 0, len(seq.prompt) - 1)
                self._root, self._root_from = list(seq.prompt[:-1]), None
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,))
            token = seq.sampler.sample(logits)
            if lib.llama_vocab_is_eog(self._vocab, token):
                seq.finish = "stop"
                self._finish(seq)
                continue
            seq.sampler.accept(token)
            seq.out.append(token)
            if seq.stop:
                text = self._llama.detokenize(seq.out, prev_tokens=seq.prompt)
                hit = [s for s in seq.stop if s in text]
                if hit:
                    seq.text, seq.finish = text[: text.index(hit[0])], "stop"
                    self._finish(seq, keep_text=True)
                    continue
            if len(seq.out) >= seq.max_tokens:
                seq.finish = "length"
                self._finish(seq)
                continue
            seq.todo = [token]

    def _finish(self, seq: _Seq, keep_text: bool = False) -> None:
        if seq.error is None and not keep_text:
            seq.text = self._llama.detokenize(seq.out, prev_tokens=seq.prompt)
        if seq is self._root_from:
            self._root_from = None
        self._lib.llama_memory_seq_rm(self._mem, seq.sid, -1, -1)
        if seq.sampler is not None:
            seq.sampler.close()
        self._active.remove(seq)
        self._free_ids.append(seq.sid)
        seq.done.set()

    def __repr__(self) -> str:
        return f"<BatchedModel {self.name} slots={self.slots} threads={self.n_threads}>"

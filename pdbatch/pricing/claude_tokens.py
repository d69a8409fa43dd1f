"""Claude token counts for estimates: Anthropic's ``count_tokens`` on a sample, else tiktoken times a factor.

Claude's tokenizer is not public, and OpenAI's (tiktoken, which pdbatch
counts with) gives fewer tokens than Claude for the same text. An estimate
for a Claude model is corrected in one of two ways, the better first:

1. **Counted by Anthropic.** With an ``anthropic.Anthropic`` client (``client=``
   of ``estimate``, or the client of an Anthropic backend: ``map`` with
   ``max_cost=`` always has one), up to :data:`COUNT_SAMPLE` of the requests
   to send, drawn at random with a fixed seed (the same ``map`` gives the same
   estimate), are counted by ``POST /v1/messages/count_tokens``
   (``client.messages.count_tokens``), which Anthropic does not charge for and
   rate-limits apart from ``messages``. The estimate is pdbatch's count of
   every request times the ratio of Anthropic's count to pdbatch's on the
   sample; a ``map`` of at most :data:`COUNT_SAMPLE` requests is counted in
   full. Nothing else is sent. Anthropic documents its own count as an
   estimate that can differ from the billed input by a small amount.
2. **A documented factor.** Without a client, or when ``count_tokens`` fails
   (no network, a 429, a proxy without the route: the note says which), the
   text tokens are tiktoken's times :data:`CLAUDE_TOKEN_FACTOR`, and the
   estimate says it is approximate. Published comparisons put Claude's
   tokenizer at roughly 15-30% more tokens than OpenAI's for the same
   English text, more for code, and Claude Opus 4.7's newer tokenizer is
   reported at up to 1.35 times the tokens of the earlier Claude models
   (:data:`NEWER_TOKENIZER`). The factors take the high end: an estimate
   that errs high keeps a budget cap safe; one that errs low would let a
   batch that cannot be stopped cost more than the cap.

Why a sample and not every request: ``count_tokens`` is one HTTP call per
request, rate-limited (100 requests a minute on Anthropic's first usage tier),
so counting 100,000 rows would take longer than the batch. Images are
counted by Anthropic in the sample (pdbatch's flat :data:`~pdbatch.pricing.tokens.IMAGE_TOKENS`
otherwise, not scaled by the factor).
"""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

from ..core.anthropic import COUNT_FIELDS, to_params

__all__ = ["COUNT_SAMPLE", "CLAUDE_TOKEN_FACTOR", "NEWER_TOKENIZER", "NEWER_TOKENIZER_FACTOR", "COUNT_FIELDS",
           "is_claude", "claude_factor", "Sample", "Correction", "count_params", "claude_correction"]

#: Requests counted by ``count_tokens`` at most, per estimate.
COUNT_SAMPLE = 10
#: Calls in flight at once while counting the sample, and the timeout of each (seconds).
COUNT_WORKERS, COUNT_TIMEOUT = 4, 10.0
#: tiktoken's text tokens are multiplied by this for a Claude model when Anthropic cannot count them.
CLAUDE_TOKEN_FACTOR = 1.3
#: Claude models with the newer tokenizer (up to 1.35x the tokens of earlier Claude models), and their factor.
NEWER_TOKENIZER = ("claude-opus-4-7", "claude-opus-4-8")
NEWER_TOKENIZER_FACTOR = 1.75


def is_claude(model: Optional[str], provider: str = "") -> bool:
    """Whether an estimate counts Claude tokens: Anthropic's API answers, or the model is a Claude model.

    Examples
    --------
    >>> is_claude("claude-haiku-4-5"), is_claude("gpt-4o-mini"), is_claude("m", "anthropic https://x")
    (True, False, True)
    """
    return provider.startswith("anthropic ") or (model or "").strip().lower().startswith("claude")


def claude_factor(model: Optional[str]) -> float:
    """The factor on tiktoken's count for ``model`` (see the module notes).

    Examples
    --------
    >>> claude_factor("claude-haiku-4-5"), claude_factor("claude-opus-4-7-20260415")
    (1.3, 1.75)
    """
    return NEWER_TOKENIZER_FACTOR if (model or "").strip().lower().startswith(NEWER_TOKENIZER) else CLAUDE_TOKEN_FACTOR


class Sample:
    """A uniform random sample (fixed seed) of ``(body, pdbatch's token count)`` from a stream of requests.

    Examples
    --------
    >>> s = Sample(size=3)
    >>> for i in range(100):
    ...     s.offer({"i": i}, i)
    >>> len(s.items), s.seen
    (3, 100)
    """

    def __init__(self, size: int = COUNT_SAMPLE, seed: int = 0):
        self.size, self.seen = size, 0
        self.items: List[Tuple[Mapping[str, Any], int]] = []
        self._rng = random.Random(seed)

    def offer(self, body: Mapping[str, Any], tokens: int) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append((body, tokens))
            return
        k = self._rng.randrange(self.seen)
        if k < self.size:
            self.items[k] = (body, tokens)


@dataclass(frozen=True)
class Correction:
    """How pdbatch's count becomes a Claude count: ``scaled(text, images)``; ``name`` and ``note`` say how."""

    name: str
    note: str
    ratio: Optional[float] = None  # Anthropic's count / pdbatch's, on the sample (text and images)
    factor: Optional[float] = None  # on text tokens, when Anthropic did not count

    def scaled(self, text: int, images: int) -> int:
        if self.ratio is not None:
            return round((text + images) * self.ratio)
        return math.ceil(text * (self.factor or 1.0)) + images


def count_params(body: Mapping[str, Any]) -> dict:
    """The ``count_tokens`` body of a chat body: its Messages params less what ``count_tokens`` does not take.

    Examples
    --------
    >>> count_params({"model": "claude-haiku-4-5", "max_tokens": 5, "temperature": 0.2,
    ...               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
    {'model': 'claude-haiku-4-5', 'system': 'Be brief.', 'messages': [{'role': 'user', 'content': 'hi'}]}
    """
    return {k: v for k, v in to_params(body).items() if k in COUNT_FIELDS}


def _api_counts(client: Any, bodies: List[Mapping[str, Any]]) -> List[int]:
    """Anthropic's input token count of each body (raises what the SDK raises).

    The first call goes alone, so that an unreachable or refusing endpoint
    costs one call's wait before the fallback, not one per body.
    """
    counting = client.with_options(max_retries=1, timeout=COUNT_TIMEOUT)

    def one(body: Mapping[str, Any]) -> int:
        return int(counting.messages.count_tokens(**count_params(body)).input_tokens)

    first = one(bodies[0])
    if len(bodies) == 1:
        return [first]
    workers = min(COUNT_WORKERS, len(bodies) - 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pdbatch-count") as pool:
        return [first] + list(pool.map(one, bodies[1:]))


def _can_count(client: Any) -> bool:
    """An ``anthropic.Anthropic`` client (checked without importing the SDK)."""
    return client is not None and type(client).__module__.split(".")[0] == "anthropic" and \
        hasattr(getattr(client, "messages", None), "count_tokens") and hasattr(client, "with_options")


def claude_correction(model: Optional[str], sample: Sample, client: Any, counter: Any) -> Correction:
    """The correction of a Claude estimate: ``count_tokens`` on ``sample`` through ``client``, else the factor.

    ``counter`` is pdbatch's own :class:`~pdbatch.pricing.tokens.TokenCounter` (its ``name`` and ``note``).
    """
    factor, counted_with = claude_factor(model), counter.name
    approx = (f"approximate: {counted_with} x {factor:g} for Claude's tokenizer (pdbatch.pricing.claude_tokens; "
              f"pass client=anthropic.Anthropic() to have Anthropic's free count_tokens count a sample)"
              + ("" if counter.exact else f"; {counter.note}"))
    if not sample.items or not _can_count(client):
        return Correction(f"{counted_with} x {factor:g}", approx, factor=factor)
    bodies = [b for b, _ in sample.items]
    ours = sum(t for _, t in sample.items)
    try:
        theirs = sum(_api_counts(client, bodies))
    except Exception as err:  # any failure: the factor, and the note says why
        why = f"{type(err).__name__}: {str(err)[:160]}"
        return Correction(f"{counted_with} x {factor:g}", f"{approx}; count_tokens failed ({why})", factor=factor)
    ratio = theirs / ours if ours else 1.0
    whole = len(bodies) == sample.seen
    how = (f"counted by Anthropic's count_tokens (all {len(bodies)} requests)" if whole else
           f"{counted_with} scaled by {ratio:.3f}, Anthropic's count_tokens / pdbatch's count on a random "
           f"sample of {len(bodies)} of the {sample.seen:,} requests")
    name = "anthropic count_tokens" if whole else f"{counted_with} x {ratio:.3f} (anthropic count_tokens sample)"
    return Correction(name, how, ratio=ratio)

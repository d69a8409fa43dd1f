"""Claude prices (Anthropic's API), USD per million tokens, for :mod:`pdbatch.pricing.prices`.

Read off Anthropic's pricing page (https://platform.claude.com/docs/en/about-claude/pricing)
in :data:`CLAUDE_PRICES_AS_OF`: base input, cache hits (``cached_input``) and
output. Message Batches cost half of these, input and output alike, as the
Batch API does (:data:`pdbatch.pricing.prices.BATCH_DISCOUNT`). Cache writes
(1.25x input for 5 minutes) are priced as plain input: pdbatch counts
``cache_creation_input_tokens`` as input tokens, so a job that writes the
cache costs slightly more than the estimate. Models whose price depends on
the prompt's length, and models not listed here, have no default price: name
them with :func:`pdbatch.pricing.set_price`. They apply to jobs answered by
:data:`ANTHROPIC_API` only (see :func:`pdbatch.pricing.prices.priced_by_default`).
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["CLAUDE_PRICES", "CLAUDE_PRICES_AS_OF", "ANTHROPIC_API"]

#: When :data:`CLAUDE_PRICES` was read.
CLAUDE_PRICES_AS_OF = "December 2026"
#: The API whose prices :data:`CLAUDE_PRICES` lists.
ANTHROPIC_API = "https://api.anthropic.com"

#: Standard prices: (input, cache hits, output) per 1M tokens. A dated id
#: (``claude-haiku-4-5-20251001``) is priced as its undated alias.
CLAUDE_PRICES: Mapping[str, tuple] = {
    "claude-opus-4-8": (5.00, 0.50, 25.00),
    "claude-opus-4-7": (5.00, 0.50, 25.00),
    "claude-opus-4-6": (5.00, 0.50, 25.00),
    "claude-opus-4-5": (5.00, 0.50, 25.00),
    "claude-opus-4-1": (15.00, 1.50, 75.00),
    "claude-opus-4-0": (15.00, 1.50, 75.00),
    "claude-opus-4": (15.00, 1.50, 75.00),
    "claude-sonnet-4-6": (3.00, 0.30, 15.00),
    "claude-sonnet-4-5": (3.00, 0.30, 15.00),
    "claude-sonnet-4-0": (3.00, 0.30, 15.00),
    "claude-sonnet-4": (3.00, 0.30, 15.00),
    "claude-haiku-4-5": (1.00, 0.10, 5.00),
    "claude-3-5-haiku": (0.80, 0.08, 4.00),
    "claude-3-haiku": (0.25, 0.03, 1.25),
}

"""Prices, cost of a job, estimates of a ``map`` before it is sent, and token counting.

See :mod:`pdbatch.pricing.prices` for the price table, its date and how to
override it, :mod:`pdbatch.pricing.estimate` for estimates, and
:mod:`pdbatch.pricing.tokens` for how tokens are counted.
"""

from .estimate import estimate_requests
from .prices import (BATCH_DISCOUNT, DEFAULT_PRICES, PRICES_AS_OF, PRICES_ENV, Price, base_model, cost,  # noqa: F401
                     format_cost, job_cost, price, reset_prices, set_price)
from .tokens import (CHARS_PER_TOKEN, IMAGE_TOKENS, IMAGE_TOKENS_LOW, MESSAGE_OVERHEAD, REQUEST_OVERHEAD,  # noqa: F401
                     TokenCounter, body_tokens, encoding_name, token_counter)

__all__ = [
    "Price", "DEFAULT_PRICES", "PRICES_AS_OF", "PRICES_ENV", "set_price", "reset_prices", "price", "base_model",
    "cost", "job_cost", "format_cost", "TokenCounter", "token_counter", "estimate_requests", "CHARS_PER_TOKEN",
    "IMAGE_TOKENS", "IMAGE_TOKENS_LOW",
]

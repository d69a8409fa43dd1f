"""Prices, cost of a job, estimates of a ``map`` before it is sent, and token counting.

See :mod:`pdbatch.pricing.prices` for the price table, its date and how to
override it, and :mod:`pdbatch.pricing.tokens` for how tokens are counted.
"""

from .prices import *  # noqa: F401,F403
from .prices import __all__  # noqa: F401

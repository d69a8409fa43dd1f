"""The budget cap of a ``map`` (``max_cost=``): the estimate against it before sending, the spend while sending.

Before anything is sent, :func:`check_estimate` compares the estimate of the
requests to send (:func:`~pdbatch.pricing.estimate.estimate_requests`,
priced at the rate the backend pays: the Batch API's, or flex's, which is the
same, or realtime) with the cap and refuses the call with
:class:`~pdbatch.errors.BudgetError` when it is over, when the price is
unknown (the cap could not be checked), or, on the batch backend, when the
output is unbounded (a batch once sent cannot be stopped). While a realtime
run sends, :class:`Spend` adds up what the answers' usage cost, and the run
stops sending once it reaches the cap.

On Anthropic a request without ``max_tokens`` still has a bound, the default
pdbatch sends (``output_default`` in the estimate). The batch backend checks
the cap against it (a batch cannot be stopped); the realtime backend checks
the input only, as it does for an unbounded OpenAI request, since it stops
sending at the cap: a default the user did not choose does not refuse a run
that the cap itself keeps in check.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ..core.records import Usage
from ..errors import BudgetError
from .prices import _unknown, batch_priced, cost, format_cost

__all__ = ["check_estimate", "Spend", "api_provider", "format_usd"]


def api_provider(provider: str) -> Optional[str]:
    """The provider as prices see it: an OpenAI-style or Anthropic server by its URL, anything else None."""
    return provider if provider.startswith(("openai ", "anthropic ")) else None


def _usd(x: float) -> str:
    return format_cost({"total": x})


def format_usd(x: float) -> str:
    """A cap as the user gave it: ``$0.75``, ``$10``, ``$0.000001``."""
    return "$" + f"{x:.10f}".rstrip("0").rstrip(".")


def check_estimate(est: Dict[str, Any], max_cost: float, backend: str, tier: Optional[str] = None, *,
                   remote: Optional[bool] = None) -> None:
    """Raise :class:`BudgetError` unless the estimate ``est`` fits under ``max_cost`` (see the module docstring).

    ``remote``: the backend runs batches remotely, at the batch price, which a
    cap cannot stop once sent (default: ``backend == "batch"``).

    Examples
    --------
    >>> est = {"model": "gpt-4o-mini", "requests": 10, "output_tokens": 100, "provider": None,
    ...        "cost_covers": "input and at most the output cap",
    ...        "cost_batch": {"total": 0.5}, "cost_realtime": {"total": 1.0}}
    >>> check_estimate(est, 0.75, "batch")
    >>> check_estimate(est, 0.75, "realtime")
    Traceback (most recent call last):
    ...
    pdbatch.errors.BudgetError: max_cost=$0.75 refuses this map: its estimate is $1.00 (input and at most ...
    """
    if backend == "local":
        return  # the local model costs nothing
    remote = backend == "batch" if remote is None else remote
    flat = batch_priced(remote, tier)
    c = est["cost_batch" if flat else "cost_realtime"]
    cap = format_usd(max_cost)
    if c is None:
        raise BudgetError(f"max_cost={cap} cannot be checked: {_unknown(est['model'], est.get('provider'))}; "
                          f"or drop max_cost=. Nothing was sent.")
    covers = est["cost_covers"]
    if est.get("output_default") and not remote:  # the realtime run stops at the cap (see the module notes)
        c, covers = dict(c, total=c["total"] - c["output"]), "input only: the realtime run stops at the cap"
    if est["output_tokens"] is None and remote:
        raise BudgetError(f"max_cost={cap} needs a bound on the output on the batch backend, where a batch once "
                          f"sent cannot be stopped: set max_completion_tokens= (max_output_tokens= with "
                          f"endpoint='responses'). Nothing was sent.")
    if c["total"] > max_cost:
        rate = "the batch price" if remote else "the flex price" if flat else "realtime prices"
        raise BudgetError(
            f"max_cost={cap} refuses this map: its estimate is {_usd(c['total'])} ({covers}, "
            f"{est['requests']:,} requests on {est['model']} at {rate}), over the cap. Nothing was sent: raise "
            f"max_cost=, lower the output cap, or run fewer rows (df.head(n)).")


class Spend:
    """What a run has spent so far, in USD, against a cap.

    Examples
    --------
    >>> from pdbatch.pricing import set_price, reset_prices
    >>> set_price("toy", input=1_000_000, output=1_000_000)          # $1 a token
    >>> s = Spend(3.0, "toy", batch=False, provider=None)
    >>> s.add(Usage(1, 1)); s.spent, s.exhausted
    (2.0, False)
    >>> s.add(Usage(1, 0)); s.exhausted
    True
    >>> reset_prices()
    """

    def __init__(self, cap: float, model: Optional[str], *, batch: bool, provider: Optional[str],
                 usage: Usage = Usage()):
        self.cap, self.model, self.batch, self.provider = cap, model, batch, provider
        self.usage = usage

    def add(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    @property
    def spent(self) -> float:
        """USD spent (unknown prices count as nothing: :func:`check_estimate` refuses them up front)."""
        c = cost(self.usage, self.model, batch=self.batch, provider=self.provider)
        return 0.0 if c is None else c["total"]

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.cap

"""What a job costs: the price table, its overrides, and the cost of token usage.

Prices
------
:data:`DEFAULT_PRICES` is a small table in US dollars per million tokens
(input, cached input, output), as listed on the OpenAI pricing page
(https://openai.com/api/pricing/) in :data:`PRICES_AS_OF`. Prices change:
the table is a default that the user overrides, with precedence

1. :func:`set_price` (this process),
2. a JSON file named by the ``PDBATCH_PRICES`` environment variable::

       {"gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.6},
        "my-finetune": {"input": 0.3, "output": 1.2}}

3. :data:`DEFAULT_PRICES`.

A dated model name (``gpt-4o-mini-2024-07-18``) is priced as its base model
(``gpt-4o-mini``) unless the name itself has an entry. :data:`DEFAULT_PRICES`
are OpenAI's: they price jobs sent to OpenAI's API (:data:`OPENAI_API`) only.
A job run against any other server (``pdbatch serve``, vLLM, a proxy: any
other ``base_url``) has an unknown cost unless :func:`set_price` or
``PDBATCH_PRICES`` names its model (those apply to every server). The Batch API costs
half the realtime price (input, cached input and output alike); the local
backend costs nothing.

What a ``map`` would cost before it is sent is in
:mod:`pdbatch.pricing.estimate`; how tokens are counted in
:mod:`pdbatch.pricing.tokens`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import orjson

from ..errors import OptionError, PdbatchError
from ..core.records import Usage
from .claude import ANTHROPIC_API, CLAUDE_PRICES, CLAUDE_PRICES_AS_OF
from .tokens import (CHARS_PER_TOKEN, IMAGE_TOKENS, IMAGE_TOKENS_LOW, MESSAGE_OVERHEAD, REQUEST_OVERHEAD,  # noqa: F401
                     TokenCounter, body_tokens, encoding_name, token_counter)

__all__ = [
    "Price", "DEFAULT_PRICES", "PRICES_AS_OF", "PRICES_ENV", "set_price", "reset_prices", "price", "base_model",
    "cost", "batch_priced", "job_cost", "format_cost", "paid_usage", "priced_by_default", "OPENAI_API", "TokenCounter", "token_counter", "CHARS_PER_TOKEN", "IMAGE_TOKENS",
    "IMAGE_TOKENS_LOW",
]

#: When :data:`DEFAULT_PRICES` was read off the OpenAI pricing page.
PRICES_AS_OF = "August 2025"
PRICES_ENV = "PDBATCH_PRICES"
BATCH_DISCOUNT = 0.5
#: The API whose prices :data:`DEFAULT_PRICES` lists.
OPENAI_API = "https://api.openai.com/v1"

@dataclass(frozen=True)
class Price:
    """USD per million tokens; ``cached_input`` None means cached tokens cost ``input``."""

    input: float
    cached_input: Optional[float] = None
    output: float = 0.0


#: Realtime (standard tier) prices, USD per 1M tokens, as listed on the OpenAI
#: pricing page in August 2025. Embedding models have no output or cached price.
DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4o": Price(2.50, 1.25, 10.00),
    # The first gpt-4o snapshot kept its launch price; not sure it is still listed.
    "gpt-4o-2024-05-13": Price(5.00, None, 15.00),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "o4-mini": Price(1.10, 0.275, 4.40),
    "gpt-5": Price(1.25, 0.125, 10.00),
    "gpt-5-mini": Price(0.25, 0.025, 2.00),
    "gpt-5-nano": Price(0.05, 0.005, 0.40),
    "text-embedding-3-small": Price(0.02),
    "text-embedding-3-large": Price(0.13),
}
# Not certain: whether the Batch API grants the cached-input rate on every model
# (its price list shows no cached column for some older ones). Cached tokens are
# priced here at the cached rate with the batch discount applied: an estimate.

_CLAUDE: Dict[str, Price] = {m: Price(*p) for m, p in CLAUDE_PRICES.items()}  # Anthropic's API only
_OVERRIDES: Dict[str, Price] = {}
_FILE_CACHE: Dict[str, Tuple[int, Dict[str, Price]]] = {}
_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")  # \d{8}: Claude's snapshots


def _check_number(name: str, value: Any, model: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise OptionError(f"{where}: {name} for {model!r} must be a number >= 0 (USD per 1M tokens), got {value!r}")
    return float(value)


def _make_price(model: str, input: Any, cached_input: Any, output: Any, where: str) -> Price:
    cached = None if cached_input is None else _check_number("cached_input", cached_input, model, where)
    return Price(_check_number("input", input, model, where), cached,
                 _check_number("output", output, model, where))


def set_price(model: str, *, input: float, cached_input: Optional[float] = None, output: float = 0.0) -> None:
    """Set (or replace) the price of ``model`` for this process, in USD per 1M tokens.

    Parameters
    ----------
    model : str
        A model name; a dated name overrides only that snapshot.
    input, cached_input, output : float
        Realtime prices; the Batch API is priced at half of these.
        ``cached_input`` None charges cached tokens at ``input``.

    Examples
    --------
    >>> set_price("my-model", input=1.0, output=2.0)
    >>> price("my-model")
    Price(input=1.0, cached_input=None, output=2.0)
    >>> reset_prices()
    """
    if not isinstance(model, str) or not model.strip():
        raise OptionError(f"set_price: model must be a non-empty string, got {model!r}")
    _OVERRIDES[model.strip().lower()] = _make_price(model, input, cached_input, output, "set_price")


def reset_prices() -> None:
    """Forget every :func:`set_price` override."""
    _OVERRIDES.clear()


def _file_prices() -> Tuple[Dict[str, Price], Optional[str]]:
    """Prices from the ``PDBATCH_PRICES`` JSON file (re-read when it changes)."""
    path = os.environ.get(PRICES_ENV)
    if not path:
        return {}, None
    path = os.path.expanduser(path)
    where = f"{PRICES_ENV}={path}"
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError as err:
        raise OptionError(f"{where}: cannot read the price file ({err.strerror}); fix the path or unset "
                          f"{PRICES_ENV}") from err
    hit = _FILE_CACHE.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1], path
    try:
        with open(path, "rb") as fh:
            data = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError) as err:
        raise OptionError(f"{where}: not a JSON file ({err}); expected "
                          f'{{"model": {{"input": 0.15, "cached_input": 0.075, "output": 0.6}}}}') from err
    if not isinstance(data, dict):
        raise OptionError(f"{where}: expected a JSON object mapping model names to prices")
    prices = {}
    for model, entry in data.items():
        if not isinstance(entry, dict) or "input" not in entry or set(entry) - {"input", "cached_input", "output"}:
            raise OptionError(f"{where}: the entry for {model!r} must be an object with input, and optionally "
                              f"cached_input and output (USD per 1M tokens), got {entry!r}")
        prices[model.strip().lower()] = _make_price(model, entry["input"], entry.get("cached_input"),
                                                    entry.get("output", 0.0), where)
    _FILE_CACHE[path] = (stamp, prices)
    return prices, path


def base_model(model: str) -> str:
    """The model name without a date suffix.

    Examples
    --------
    >>> base_model("gpt-4o-mini-2024-07-18")
    'gpt-4o-mini'
    >>> base_model("gpt-3.5-turbo-0125")
    'gpt-3.5-turbo'
    >>> base_model("gpt-5")
    'gpt-5'
    """
    return _DATED.sub("", model)


def priced_by_default(provider: Optional[str]) -> bool:
    """Whether :data:`DEFAULT_PRICES` apply to a job answered by ``provider`` (OpenAI's API; None: unknown, assumed).

    ``provider`` is a backend's :attr:`~pdbatch.backends.Backend.provider`, e.g.
    ``"openai https://api.openai.com/v1"``.

    Examples
    --------
    >>> priced_by_default("openai https://api.openai.com/v1 org=org-1"), priced_by_default(None)
    (True, True)
    >>> priced_by_default("openai http://127.0.0.1:8000/v1")
    False
    """
    if provider is None:
        return True
    parts = provider.split()
    return len(parts) >= 2 and (parts[0], parts[1].rstrip("/")) in (("openai", OPENAI_API),
                                                                      ("anthropic", ANTHROPIC_API))


def _lookup(model: Optional[str], defaults: bool = True) -> Tuple[Optional[Price], Optional[str], str]:
    """``(price, priced_as, source)``; the exact name first, then the undated one (``defaults``: the OpenAI table too)."""
    if not model:
        return None, None, ""
    name = model.strip().lower()
    from_file, path = _file_prices()
    layers = ((_OVERRIDES, "set_price"), (from_file, f"{PRICES_ENV}={path}"))
    if defaults:
        layers += ((DEFAULT_PRICES, f"OpenAI pricing page, {PRICES_AS_OF}"),
                   (_CLAUDE, f"Anthropic pricing page, {CLAUDE_PRICES_AS_OF}"))
    for candidate in dict.fromkeys((name, base_model(name))):
        for table, source in layers:
            if candidate in table:
                return table[candidate], candidate, source
    return None, None, ""


def price(model: Optional[str]) -> Optional[Price]:
    """The realtime price of ``model``, or None when no table knows it.

    Examples
    --------
    >>> price("gpt-4o-mini-2024-07-18") == price("gpt-4o-mini")
    True
    >>> price("no-such-model") is None
    True
    """
    return _lookup(model)[0]


def batch_priced(remote: bool, tier: Optional[str] = None) -> bool:
    """Whether requests pay the Batch API's price: sent as a batch (``remote``), or realtime on the flex tier.

    >>> batch_priced(True), batch_priced(False, "flex"), batch_priced(False, "default")
    (True, True, False)
    """
    return bool(remote) or tier == "flex"


def cost(usage: Usage, model: Optional[str], *, batch: bool, local: bool = False,
         provider: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The cost in USD of ``usage`` on ``model``.

    Parameters
    ----------
    usage : Usage
        ``prompt_tokens`` include ``cached_tokens`` (as the API reports them).
    model : str
    batch : bool
        Apply the Batch API's 50% discount (also the price of ``service_tier="flex"`` calls).
    local : bool
        The local backend: everything costs 0.
    provider : str, optional
        Who answered (a backend's ``provider``); a server other than
        OpenAI's API is priced only by :func:`set_price` or ``PDBATCH_PRICES``.

    Returns
    -------
    dict or None
        ``{"input", "cached", "output", "total"}`` in USD (``input`` is the
        uncached part), with ``currency``, ``batch``, ``priced_as``,
        ``prices`` (USD per 1M before the discount) and ``source``; None
        when the model has no price (see :func:`job_cost` for the note).

    Examples
    --------
    >>> c = cost(Usage(2_000_000, 1_000_000, cached_tokens=1_000_000), "gpt-4o-mini", batch=True)
    >>> c["input"], c["cached"], c["output"], c["total"]
    (0.075, 0.0375, 0.3, 0.4125)
    >>> cost(Usage(10, 10), "no-such-model", batch=False) is None
    True
    >>> cost(Usage(10, 10), "gpt-4o-mini", batch=True, provider="openai http://127.0.0.1:8000/v1") is None
    True
    """
    if local:
        return {"input": 0.0, "cached": 0.0, "output": 0.0, "total": 0.0, "currency": "USD", "batch": False,
                "priced_as": None, "prices": None, "source": "local model: no charge"}
    p, priced_as, source = _lookup(model, defaults=priced_by_default(provider))
    if p is None:
        return None
    factor = (BATCH_DISCOUNT if batch else 1.0) / 1e6
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    parts = {
        "input": (usage.prompt_tokens - cached) * p.input * factor,
        "cached": cached * (p.input if p.cached_input is None else p.cached_input) * factor,
        "output": usage.completion_tokens * p.output * factor,
    }
    out: Dict[str, Any] = {k: round(v, 10) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()), 10)
    out.update(currency="USD", batch=bool(batch), priced_as=priced_as,
               prices={"input": p.input, "cached_input": p.cached_input, "output": p.output}, source=source)
    return out


def _unknown(model: Optional[str], provider: Optional[str] = None) -> str:
    fix = (f"set one with pdbatch.pricing.set_price({model!r}, input=..., output=...) or a JSON file named by "
           f"{PRICES_ENV}")
    if not priced_by_default(provider) and _lookup(model)[0] is not None:
        where = provider.split()[1] if len(provider.split()) > 1 else provider
        return (f"no price known for model {model!r} on {where}: pdbatch's price table is OpenAI's, for "
                f"{OPENAI_API} only; if that server charges, {fix}")
    return f"no price known for model {model!r}: {fix}"


def paid_usage(total: Usage, cached: Usage) -> Usage:
    """``total`` less the usage of rows served from pdbatch's answer cache (paid by an earlier job).

    Examples
    --------
    >>> paid_usage(Usage(100, 10, cached_tokens=20), Usage(40, 4))
    Usage(prompt_tokens=60, completion_tokens=6, cached_tokens=20, reasoning_tokens=0)
    """
    return Usage(max(0, total.prompt_tokens - cached.prompt_tokens),
                 max(0, total.completion_tokens - cached.completion_tokens),
                 max(0, total.cached_tokens - cached.cached_tokens),
                 max(0, total.reasoning_tokens - cached.reasoning_tokens))


def job_cost(usage: Usage, model: Optional[str], backend: str, *, cached_rows: int = 0,
             provider: Optional[str] = None, tier: Optional[str] = None) -> Dict[str, Any]:
    """The ``cost`` entry of a job's summary (and ``cost_note`` when there is something to say).

    Parameters
    ----------
    usage : Usage
        The tokens the job paid for (see :func:`paid_usage`): rows served
        from pdbatch's answer cache are not in it.
    model : str
    backend : str
        ``"batch"`` (half price), ``"realtime"`` or ``"local"`` (free).
    cached_rows : int
        Rows served from the answer cache (named in the note).
    provider : str, optional
        Who answered (see :func:`cost`): another server than OpenAI's API
        has no default price.
    tier : str, optional
        The requests' ``service_tier``: ``"flex"`` is billed at the Batch API's price.

    Never raises: a missing price or a bad ``PDBATCH_PRICES`` file becomes
    ``{"cost": None, "cost_note": ...}``.

    Examples
    --------
    >>> job_cost(Usage(1000, 10), "gpt-4o-mini", "local")["cost"]["total"]
    0.0
    >>> job_cost(Usage(1000, 10), "mystery", "batch")["cost"] is None
    True
    >>> job_cost(Usage(1000, 10), "gpt-4o-mini", "batch", provider="openai http://localhost:8000/v1")["cost_note"]
    "no price known for model 'gpt-4o-mini' on http://localhost:8000/v1: pdbatch's price table is OpenAI's, ..."
    """
    try:
        c = cost(usage, model, batch=batch_priced(backend == "batch", tier), local=backend == "local",
                 provider=provider)
    except PdbatchError as err:
        return {"cost": None, "cost_note": str(err)}
    if c is None:
        return {"cost": None, "cost_note": _unknown(model, provider)}
    out: Dict[str, Any] = {"cost": c}
    if cached_rows and backend != "local":
        out["cost_note"] = (f"{cached_rows} row(s) came from pdbatch's answer cache: their tokens are not in "
                            f"this cost (an earlier job paid for them)")
    return out


def format_cost(x: Optional[Dict[str, Any]]) -> str:
    """A cost dict as dollars for people: ``$0.0123``; ``unknown`` for None."""
    if x is None:
        return "unknown"
    t = x["total"]
    return f"${t:,.2f}" if t >= 1 else f"${t:.4f}" if t >= 0.01 or t == 0 else f"${t:.6f}"

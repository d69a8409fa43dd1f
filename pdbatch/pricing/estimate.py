"""What a ``map`` would cost before it is sent: :func:`estimate_requests`.

It counts the tokens of the rendered request bodies and prices them with
:func:`pdbatch.pricing.prices.cost`, at Batch API and realtime prices;
nothing is sent. ``df.llm.estimate`` calls it.

Token counts for estimates
--------------------------
:func:`~pdbatch.pricing.tokens.token_counter` uses tiktoken (``o200k_base``
for the gpt-4o, gpt-4.1, gpt-5 and o-series families, ``cl100k_base`` for the
others) when its encoding file can be loaded. tiktoken downloads that file on
first use; with no network (or ``PDBATCH_TOKENIZER=heuristic``) the count
falls back to :data:`~pdbatch.pricing.tokens.CHARS_PER_TOKEN` characters per
token, and every estimate says which counter it used. Chat messages add
:data:`~pdbatch.pricing.tokens.MESSAGE_OVERHEAD` tokens each and
:data:`~pdbatch.pricing.tokens.REQUEST_OVERHEAD` per request; an image counts
a flat :data:`~pdbatch.pricing.tokens.IMAGE_TOKENS`
(:data:`~pdbatch.pricing.tokens.IMAGE_TOKENS_LOW` with ``detail="low"``).

Claude models
-------------
tiktoken is OpenAI's tokenizer: for a Claude model the count is corrected,
by Anthropic's free ``count_tokens`` on a sample of the requests when an
Anthropic client is at hand, else by a documented factor, and the estimate
says which (:mod:`pdbatch.pricing.claude_tokens`). A request to Anthropic
without ``max_tokens`` is bounded by the 1024 pdbatch sends
(:data:`pdbatch.core.anthropic.DEFAULT_MAX_TOKENS`), so its output is
bounded too (``output_default`` says the bound is that default).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ..core.anthropic import DEFAULT_MAX_TOKENS
from ..core.records import EMBEDDINGS_URL, Usage, request_hash
from .claude_tokens import Sample, claude_correction, is_claude
from .prices import PRICES_AS_OF, _unknown, cost, format_cost
from .tokens import body_tokens, token_counter

__all__ = ["estimate_requests"]


def estimate_requests(
    requests: Iterable[Any],
    *,
    model: Optional[str],
    rows: int,
    skipped: Mapping[int, str],
    store: Any = None,
    provider: str = "",
    chunk: int = 5000,
    client: Any = None,
) -> Dict[str, Any]:
    """Count what ``requests`` would send and price it; nothing is sent.

    Parameters
    ----------
    requests : iterable of Request
        As :meth:`pdbatch.spec.MapSpec.requests` yields them.
    model : str or None
    rows : int
        Rows of the frame.
    skipped : mapping
        Row position to reason, read after ``requests`` is consumed (it grows
        while they render).
    store : Store, optional
        Look each request up in the answer cache (what ``map`` with
        ``cache=True`` would not send again).
    provider : str
        Who would answer (part of the cache key; see
        :func:`pdbatch.backends.provider_of`).
    client : anthropic.Anthropic, optional
        With an Anthropic ``provider``, counts a sample of the requests with
        ``count_tokens`` (free; see :mod:`pdbatch.pricing.claude_tokens`).
        Any other client is not used.

    Returns
    -------
    dict
        ``rows, requests, cached, skipped, skip_reasons, input_tokens, images,
        image_tokens, output_tokens, output_default, max_output_per_request,
        tokenizer, tokenizer_note, token_factor, cost_batch, cost_realtime,
        cost_covers, summary``. ``requests`` counts what would be sent;
        ``output_tokens`` is the cap from ``max_completion_tokens`` (or
        ``max_tokens``) times ``n``, None when a request sets neither (on
        Anthropic, which needs one, the default pdbatch sends: then
        ``output_default`` is True). For a Claude model ``input_tokens`` is
        corrected for Claude's tokenizer (``token_factor``: the ratio applied,
        ``input_tokens_uncorrected``: pdbatch's own count).
    """

    counter = token_counter(model)
    count = counter.count
    memo: Dict[int, Any] = {}
    sent = cached = tokens = images = image_tokens = out_tokens = 0
    caps: set = set()
    output_known, output_default = True, False
    batch: List[Any] = []
    claude, anthropic_api = is_claude(model, provider), provider.startswith("anthropic ")
    sample = Sample()

    def flush() -> None:
        nonlocal sent, cached, tokens, images, image_tokens, out_tokens, output_known, output_default
        hashes = [request_hash(r, provider) for r in batch] if store is not None else [None] * len(batch)
        hits = store.cached(hashes) if store is not None else {}
        for r, h in zip(batch, hashes):
            if h in hits:
                cached += 1
                continue
            sent += 1
            t, i, it = body_tokens(r.body, count, memo)
            tokens, images, image_tokens = tokens + t, images + i, image_tokens + it
            if claude:
                sample.offer(r.body, t + it)
            cap = 0 if r.url == EMBEDDINGS_URL else \
                r.body.get("max_completion_tokens", r.body.get("max_tokens", r.body.get("max_output_tokens")))
            if cap is None and anthropic_api:  # Anthropic needs max_tokens: pdbatch sends its default
                cap, output_default = DEFAULT_MAX_TOKENS, True
            if cap is None:
                output_known = False
            else:
                caps.add(int(cap))
                out_tokens += int(cap) * int(r.body.get("n") or 1)
        batch.clear()

    for req in requests:
        batch.append(req)
        if len(batch) >= chunk:
            flush()
    flush()
    input_tokens = tokens + image_tokens
    tokenizer, tokenizer_note, ratio = counter.name, counter.note, None
    if claude:  # tiktoken is OpenAI's tokenizer: corrected for Claude's
        fix = claude_correction(model, sample, client if anthropic_api else None, counter)
        input_tokens = fix.scaled(tokens, image_tokens)
        tokenizer, tokenizer_note = fix.name, fix.note
        ratio = fix.ratio if fix.ratio is not None else fix.factor
    output = out_tokens if output_known else None
    usage = Usage(input_tokens, output or 0)
    # An OpenAI-style server is priced as what it is (unknown unless it is OpenAI's API or the user set a
    # price); with the local model (free) the estimate prices the APIs it stands in for.
    api = provider if provider.startswith(("openai ", "anthropic ")) else None
    cost_batch = cost(usage, model, batch=True, provider=api)
    cost_realtime = cost(usage, model, batch=False, provider=api)
    reasons = Counter(skipped.values())
    est: Dict[str, Any] = {
        "model": model, "rows": rows, "requests": sent, "cached": cached, "skipped": len(skipped),
        "skip_reasons": dict(reasons.most_common()), "input_tokens": input_tokens, "images": images,
        "image_tokens": image_tokens, "output_tokens": output, "output_default": output_default,
        "max_output_per_request": max(caps) if output_known and caps else None,
        "tokenizer": tokenizer, "tokenizer_note": tokenizer_note, "token_factor": ratio,
        "input_tokens_uncorrected": tokens + image_tokens,
        "cost_batch": cost_batch, "cost_realtime": cost_realtime,
        "cost_covers": "input and at most the output cap" if output is not None else "input only",
        "prices_as_of": PRICES_AS_OF, "provider": api,
    }
    est["summary"] = _summary(est)
    return est


def _summary(e: Dict[str, Any]) -> str:
    skip = ""
    if e["skipped"]:
        top = "; ".join(f"{n}: {r}" for r, n in list(e["skip_reasons"].items())[:3])
        skip = f", {e['skipped']} skipped ({top})"
    cached = f", {e['cached']} answered from the cache" if e["cached"] else ""
    imgs = (f", including {e['images']} image(s) at a flat {e['image_tokens'] // max(e['images'], 1)} tokens each"
            if e["images"] else "")
    if e["output_tokens"] is None:
        out = ("output tokens unknown (set max_completion_tokens=, or max_output_tokens= on the Responses "
               "endpoint, to bound them)")
    else:
        out = f"output at most {e['output_tokens']:,} tokens"
        if e.get("output_default"):
            out += f" (max_tokens={DEFAULT_MAX_TOKENS}, the default pdbatch sends to Anthropic)"
    if e["cost_batch"] is None:
        money = _unknown(e["model"], e["provider"])
    else:
        alias = e["cost_batch"]["priced_as"]
        model = e["model"] if alias == (e["model"] or "").lower() else f"{e['model']} (priced as {alias})"
        money = (f"estimated cost on {model}: {format_cost(e['cost_batch'])} with the Batch API, "
                 f"{format_cost(e['cost_realtime'])} realtime ({e['cost_covers']}; prices from "
                 f"{e['cost_batch']['source']})")
    return (f"pdbatch estimate: {e['rows']:,} rows -> {e['requests']:,} requests to send{skip}{cached}. "
            f"Input ~{e['input_tokens']:,} tokens{imgs} [{e['tokenizer_note']}]; {out}; {money}. "
            f"Nothing was sent.")

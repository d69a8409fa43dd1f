"""pdbatch's own keyword names, and the closest one to a mistyped name ("did you mean").

:data:`ARGUMENT_NAMES` lists every keyword argument of ``map`` (and of
``submit``, ``embed``, ``estimate``, the backends): the spec's arguments, the
backend choice, and every option of :data:`pdbatch.options.OPTIONS` (the
tests keep the two in step). :func:`suggest` picks a candidate for an
unknown name, so ``output_column=`` is answered with ``output=``.

Examples
--------
>>> suggest("output_column", ARGUMENT_NAMES), suggest("modle", ARGUMENT_NAMES)
('output', 'model')
>>> suggest("zzz", ARGUMENT_NAMES) is None
True
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

from ..errors import OptionError

__all__ = ["SPEC_ARGUMENTS", "ARGUMENT_NAMES", "CHAT_PARAMS", "EMBED_PARAMS", "RESPONSES_PARAMS", "suggest",
           "check_params"]

#: The keyword arguments that say what is asked (:meth:`pdbatch.core.spec.MapSpec.build`).
SPEC_ARGUMENTS: Tuple[str, ...] = ("model", "system", "response_format", "images", "image_detail", "output",
                                   "error_column", "raw_column", "extra_body", "endpoint")
#: Every keyword name of pdbatch's own: the spec's, the backend choice, and every option.
ARGUMENT_NAMES: Tuple[str, ...] = SPEC_ARGUMENTS + (
    "backend", "client", "overwrite", "cache", "max_retries", "retry_invalid", "name", "wait", "progress", "timeout",
    "show", "embeddings", "shard_size", "shard_bytes", "poll_interval", "max_poll_interval", "create_attempts",
    "create_timeout", "max_concurrency", "rpm", "tpm", "max_attempts", "rate_period", "backoff", "max_backoff",
    "max_retry_after", "workers", "threads_per_worker", "dimensions", "encoding_format", "max_cost",
)

#: Endings a user adds to a name that has none (``output_column`` for ``output``).
_ENDINGS = ("_column", "_col", "_name", "_names", "s")


def suggest(key: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate closest to a mistyped ``key``, or None when none is close.

    Parameters
    ----------
    key : str
        The unknown name.
    candidates : iterable of str
        The names it may have meant.

    Returns
    -------
    str or None
        A candidate ``key`` only adds an ending to (``output_column`` is
        ``output``, not ``error_column``); else the closest by
        :func:`difflib.get_close_matches`; else None.
    """
    names = list(dict.fromkeys(candidates))
    for ending in _ENDINGS:
        if key.endswith(ending) and key[:-len(ending)] in names:
            return key[:-len(ending)]
    close = difflib.get_close_matches(key, names, n=1)
    return close[0] if close else None


#: Chat Completions body parameters a user may pass through ``**params``.
CHAT_PARAMS = frozenset(
    """temperature top_p max_completion_tokens max_tokens seed n logprobs top_logprobs stop
    presence_penalty frequency_penalty logit_bias user reasoning_effort service_tier store metadata
    verbosity prediction modalities audio parallel_tool_calls tools tool_choice prompt_cache_key
    safety_identifier web_search_options""".split()
)

#: Responses body parameters a user may pass through ``**params`` (``endpoint="responses"``).
RESPONSES_PARAMS = frozenset(
    """temperature top_p max_output_tokens reasoning service_tier store metadata user tools tool_choice
    parallel_tool_calls truncation prompt_cache_key safety_identifier top_logprobs include max_tool_calls""".split()
)

#: Embeddings body parameters a user may pass.
EMBED_PARAMS = frozenset({"dimensions", "encoding_format", "user"})

def check_params(params: Mapping[str, Any], known: Sequence[str] = (), allowed=CHAT_PARAMS) -> None:
    """Raise :class:`OptionError` for a keyword that is neither an option nor a body parameter.

    The message suggests the closest of the body parameters in ``allowed``,
    ``known`` and pdbatch's own keyword arguments (:data:`pdbatch.core.names.ARGUMENT_NAMES`).
    """
    for key in params:
        if key not in allowed:
            if key in ARGUMENT_NAMES:  # an option of another call (``progress=`` given to ``submit``): not a typo
                hint = f" {key}= is an option of other pdbatch calls, not of this one (help() lists its options)."
            else:
                close = suggest(key, [*ARGUMENT_NAMES, *known, *sorted(allowed)])
                hint = f" Did you mean {close}=?" if close else ""
            raise OptionError(
                f"unknown option {key!r}.{hint} Request body parameters pdbatch passes through are: "
                f"{', '.join(sorted(allowed))}; put anything else in extra_body={{...}}."
            )

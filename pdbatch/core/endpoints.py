"""The Responses endpoint's request bodies, and what ``endpoint=`` accepts.

A ``map`` on ``endpoint="responses"`` sends the same rows as one on chat
completions, in the Responses shape: the system prompt is ``instructions``,
the user content goes in ``input`` (text as ``input_text``, images as
``input_image`` parts) and a response format is ``text.format``. Every body
says ``store: false``: the Responses API keeps each response (for
``previous_response_id``) unless told not to, and a ``map`` has no use for
that copy; ``store=True`` asks for it.
:class:`~pdbatch.core.spec.MapSpec` builds both shapes through the same line
writer; the answers are read back by :mod:`pdbatch.core.answers`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ..errors import OptionError
from .records import CHAT_URL, RESPONSES_URL

__all__ = ["ENDPOINTS", "endpoint_url", "responses_body_maker", "responses_image", "responses_format"]

#: What ``endpoint=`` accepts, and the URL each stands for.
ENDPOINTS = {"chat": CHAT_URL, "chat.completions": CHAT_URL, CHAT_URL: CHAT_URL,
             "responses": RESPONSES_URL, RESPONSES_URL: RESPONSES_URL}
#: Chat names a Responses body calls otherwise, and what to pass instead.
RESPONSES_RENAMED = {"max_completion_tokens": "max_output_tokens=", "max_tokens": "max_output_tokens=",
                     "reasoning_effort": "reasoning={'effort': ...}"}


def endpoint_url(endpoint: Optional[str]) -> str:
    """The request URL ``endpoint=`` names (None: chat completions).

    Examples
    --------
    >>> endpoint_url("responses"), endpoint_url(None)
    ('/v1/responses', '/v1/chat/completions')
    """
    if endpoint is None:
        return CHAT_URL
    url = ENDPOINTS.get(endpoint.strip().lower()) if isinstance(endpoint, str) else None
    if url is None:
        raise OptionError(f"endpoint must be 'chat' (chat completions, the default) or 'responses' "
                          f"(also '/v1/chat/completions' or '/v1/responses'), got {endpoint!r}")
    return url


def responses_format(body: Optional[Mapping[str, Any]]) -> Optional[dict]:
    """A Chat Completions ``response_format`` as the Responses endpoint's ``text.format``."""
    if body is None:
        return None
    if body.get("type") == "json_schema":
        return {"type": "json_schema", **body.get("json_schema", {})}
    return dict(body)


def responses_image(part: Mapping[str, Any]) -> dict:
    """A chat ``image_url`` content part as a Responses ``input_image`` part."""
    img = part.get("image_url") or {}
    out = {"type": "input_image", "image_url": img.get("url")}
    if img.get("detail") is not None:
        out["detail"] = img["detail"]
    return out


#: Body fields pdbatch builds on the Responses endpoint besides those.
RESPONSES_BUILT = {"instructions": "use system=...", "text": "use response_format=..."}


def responses_body_maker(model: Optional[str], system: Any, fmt_body: Optional[Mapping[str, Any]],
                         base: Dict[str, Any]):
    """A function from a row's values to its Responses body (the values as ``MapSpec._slots`` gives them).

    ``system`` is the system :class:`~pdbatch.core.template.Template` (or None),
    ``fmt_body`` the chat ``response_format`` body, ``base`` the other body fields.

    Examples
    --------
    >>> make = responses_body_maker("m", None, {"type": "json_object"}, {"max_output_tokens": 5})
    >>> make(("hi",))
    {'model': 'm', 'input': [{'role': 'user', 'content': 'hi'}], 'store': False, 'max_output_tokens': 5, 'text': {'format': {'type': 'json_object'}}}
    """
    base = {"store": False, **base}  # unless the user passed store=: see the module notes
    fmt = responses_format(fmt_body)
    if fmt is not None:
        base = dict(base, text={"format": fmt})
    if system is not None and not system.fields:
        const = system.compiled.format()
        return lambda values: {"model": model, "instructions": const,
                               "input": [{"role": "user", "content": values[0]}], **base}
    if system is not None:
        return lambda values: {"model": model, "instructions": values[0],
                               "input": [{"role": "user", "content": values[1]}], **base}
    return lambda values: {"model": model, "input": [{"role": "user", "content": values[0]}], **base}

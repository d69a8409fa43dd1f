"""Request checks of the local server that the hosted API makes before running a request.

Only image content parts are checked for now (:func:`check_images`): a chat
request whose ``image_url`` the API would refuse fails with a 400, as a
realtime response or as that line's error-file entry in a batch, and the
engine never sees it. The rules are :func:`pdbatch.core.images.image_url_problem`'s
(``http(s)://`` or ``data:image/...`` URLs, at most 20 MB decoded).
Error codes, where the public contract is silent: ``invalid_value`` for a
missing or non-string URL, ``invalid_image_url`` for any other refused URL.
"""

from __future__ import annotations

from typing import Any

from ..core.images import image_url_problem
from ..core.records import CHAT_URL
from ..errors import EngineError

__all__ = ["check_images"]


def check_images(body: Any, url: str) -> None:
    """Raise :class:`EngineError` (400) for the first image part of ``body`` the API would refuse.

    Parameters
    ----------
    body : dict
        A request body sent to ``url``.
    url : str
        The endpoint; only ``/v1/chat/completions`` bodies carry image parts.

    Examples
    --------
    >>> check_images({"messages": [{"role": "user", "content": [
    ...     {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}, CHAT_URL)
    >>> check_images({"messages": [{"role": "user", "content": [
    ...     {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]}, CHAT_URL)
    Traceback (most recent call last):
    ...
    pdbatch.errors.EngineError: Invalid image URL 'messages[0].content[0].image_url.url': unsupported ...
    """
    messages = body.get("messages") if url == CHAT_URL and isinstance(body, dict) else None
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            param = f"messages[{i}].content[{j}].image_url.url"
            image = part.get("image_url")
            link = image.get("url") if isinstance(image, dict) else None
            if not isinstance(link, str):
                raise EngineError(400, "invalid_value", f"Invalid '{param}': expected a string URL.", param=param)
            problem = image_url_problem(link)
            if problem is not None:
                raise EngineError(400, "invalid_image_url", f"Invalid image URL '{param}': {problem}.",
                                  param=param)

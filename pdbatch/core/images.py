"""Image inputs: turn a URL or a local file into an ``image_url`` content part.

:func:`image_part` takes what a user puts in an ``images=`` column (an
``http(s)://`` URL, a ``data:`` URL, a local path or ``file://`` URL) and
returns the part, or the reason the row cannot be sent (which becomes its
error cell). :func:`image_url_problem` holds the rules the API applies to an
image URL; the local server (:mod:`pdbatch.server`) checks requests by them.
"""

from __future__ import annotations

import base64
import math
import mimetypes
import os
import re
from typing import Any, Optional, Tuple

import pandas as pd

__all__ = ["IMAGE_MAX_BYTES", "image_part", "image_url_problem"]

#: Largest image the API takes, in bytes: a local file, or the decoded payload of a data URL.
IMAGE_MAX_BYTES = 20 * 1024 * 1024
#: A URL scheme (any case) and whether ``//`` follows it.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(//)?")


def image_part(ref: Any, detail: Optional[str] = None) -> Tuple[Optional[dict], Optional[str]]:
    """Build an ``image_url`` content part from a URL or a local file path.

    Returns ``(part, None)`` or ``(None, reason)`` when the image cannot be used
    (a missing local file, a missing value, a data URL that is not an image,
    an image over :data:`IMAGE_MAX_BYTES`): the reason becomes that row's
    error cell, not an exception. URL schemes are matched in any case and
    sent in lower case.

    Examples
    --------
    >>> image_part("https://example.com/a.png")[0]["image_url"]["url"]
    'https://example.com/a.png'
    >>> image_part("HTTPS://example.com/a.png")[0]["image_url"]["url"]
    'https://example.com/a.png'
    >>> image_part("no/such/file.png")[1]
    "image file not found: 'no/such/file.png'"
    """
    if ref is None or ref is pd.NA or ref is pd.NaT or (isinstance(ref, float) and math.isnan(ref)):
        return None, "missing value (None or NaN) in a list of images; drop missing entries from the lists"
    ref = str(ref).strip()
    m = _SCHEME.match(ref)
    scheme = m.group(1).lower() if m else None
    if scheme == "data" or (scheme in ("http", "https") and m.group(2)):
        url = scheme + ref[len(scheme):]
        problem = image_url_problem(url)
        if problem is not None:
            return None, f"{problem}: {_shown(ref)!r}"
    elif scheme is not None and m.group(2) and scheme != "file":
        return None, (f"unsupported image URL scheme {scheme!r}: {_shown(ref)!r}; use an http(s):// URL, "
                      f"a data:image/... URL or a local file path")
    else:
        path = os.path.expanduser(ref[7:] if scheme == "file" else ref)
        if not os.path.isfile(path):
            return None, f"image file not found: {ref!r}"
        mime = mimetypes.guess_type(path)[0]
        if not mime or not mime.startswith("image/"):
            return None, f"not an image file (unknown type): {ref!r}"
        size = os.path.getsize(path)
        if size > IMAGE_MAX_BYTES:
            return None, f"{_too_large(size)}: {ref!r}; resize or recompress the file"
        with open(path, "rb") as fh:
            data = base64.b64encode(fh.read()).decode("ascii")
        url = f"data:{mime};base64,{data}"
    img: dict = {"url": url}
    if detail:
        img["detail"] = detail
    return {"type": "image_url", "image_url": img}, None


def image_url_problem(url: str) -> Optional[str]:
    """Why the API would refuse ``url`` as an image URL, or ``None`` if it takes it.

    It takes ``http(s)://`` URLs and ``data:image/...`` URLs whose decoded
    payload is at most :data:`IMAGE_MAX_BYTES`; schemes are matched in any case.

    Examples
    --------
    >>> image_url_problem("https://example.com/a.png") is None
    True
    >>> image_url_problem("data:text/plain;base64,aGk=")
    "data URL is not an image (media type 'text/plain'); images must be data:image/... URLs"
    >>> image_url_problem("ftp://example.com/a.png")
    "unsupported image URL scheme 'ftp'; use an http(s):// URL or a data:image/... URL"
    """
    m = _SCHEME.match(url) if isinstance(url, str) else None
    scheme = m.group(1).lower() if m else ""
    if scheme in ("http", "https") and m.group(2):
        return None
    if scheme != "data":
        return f"unsupported image URL scheme {scheme!r}; use an http(s):// URL or a data:image/... URL"
    comma = url.find(",")  # no slicing: the payload may be megabytes long
    header = url[5:comma] if comma >= 0 else url[5:200]
    mime = header.split(";", 1)[0].strip().lower()
    if not mime.startswith("image/"):
        return f"data URL is not an image (media type {mime!r}); images must be data:image/... URLs"
    if comma < 0:
        return "data URL has no ',' before its data"
    size = len(url) - comma - 1
    if header.lower().endswith(";base64"):
        size = size * 3 // 4 - (2 if url.endswith("==") else 1 if url.endswith("=") else 0)
    return _too_large(size) if size > IMAGE_MAX_BYTES else None


def _too_large(size: int) -> str:
    return (f"image is too large ({size / 2**20:.1f} MB; the API takes at most "
            f"{IMAGE_MAX_BYTES // 2**20} MB per image)")


def _shown(ref: str, limit: int = 80) -> str:
    """``ref`` cut to ``limit`` characters for a message (data URLs can be megabytes long)."""
    return ref if len(ref) <= limit else ref[:limit] + "..."

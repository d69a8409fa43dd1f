"""Prompt templates: parse ``{column}`` fields, check them, render rows.

A template is a :meth:`str.format` string whose fields name columns
(``"Title: {Series_Title}\\n{Overview}"``); ``{{`` and ``}}`` are literal
braces and format specs work (``{price:.2f}``). On a Series the value is
``{}`` or ``{value}``.

Rendering is column-wise: each referenced column is turned into display
strings once, then rows are formatted with one positional format string, which
keeps the per-row cost to a single :meth:`str.format` call.
"""

from __future__ import annotations

import base64
import math
import mimetypes
import os
import string
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import orjson
import pandas as pd

from ..errors import MissingColumnError, TemplateError

__all__ = ["Template", "display_strings", "image_part", "SERIES_FIELD"]

#: Name under which a Series' values are visible to a template.
SERIES_FIELD = "value"
_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class Template:
    """A parsed prompt template.

    Parameters
    ----------
    text : str
        The template as the user wrote it.
    fields : tuple of str
        Column names referenced, in order of first use.
    compiled : str
        The same template with each field replaced by its position, ready for
        ``compiled.format(*values)``.
    raw_fields : frozenset of str
        Fields that carry a format spec or conversion, rendered from the raw
        value rather than from its display string.

    Examples
    --------
    >>> t = Template.parse("Title: {title} ({year}) {{json}}")
    >>> t.fields
    ('title', 'year')
    >>> t.compiled
    'Title: {0} ({1}) {{json}}'
    >>> t.literal_text
    'Title:  () {json}'
    """

    text: str
    fields: Tuple[str, ...]
    compiled: str
    raw_fields: frozenset
    literal_text: str

    @classmethod
    def parse(cls, text: str, *, series: bool = False, argument: str = "template") -> "Template":
        """Parse ``text``; raise :class:`TemplateError` if it is malformed.

        Parameters
        ----------
        text : str
            The template.
        series : bool
            True when the host is a Series: ``{}`` and ``{0}`` then mean the value.
        argument : str
            The argument name used in error messages.
        """
        if not isinstance(text, str):
            raise TemplateError(f"{argument} must be a str, got {type(text).__name__}")
        try:
            parts = list(_FORMATTER.parse(text))
        except ValueError as err:
            raise TemplateError(
                f"{argument} is not a valid format string ({err}); write literal braces as '{{{{' and '}}}}'"
            ) from err
        fields: List[str] = []
        raw: set = set()
        out: List[str] = []
        literal: List[str] = []
        for lit, name, spec, conv in parts:
            lit_escaped = lit.replace("{", "{{").replace("}", "}}")
            out.append(lit_escaped)
            literal.append(lit)
            if name is None:
                continue
            root = name.split(".", 1)[0].split("[", 1)[0]
            rest = name[len(root):]
            if root == "" or root.isdigit():
                if not series:
                    raise TemplateError(
                        f"{argument} has a positional field '{{{name}}}'; on a DataFrame name the "
                        f"column instead, e.g. '{{Overview}}'"
                    )
                root = SERIES_FIELD
            if rest:
                raise TemplateError(
                    f"{argument} field '{{{name}}}' uses attribute or item access, which is not "
                    f"supported; add a column holding the value you need"
                )
            if conv is not None and conv not in ("r", "s", "a"):
                raise TemplateError(
                    f"{argument} field '{{{name}!{conv}}}' has an unknown conversion; use !r, !s or !a"
                )
            if spec and ("{" in spec):
                raise TemplateError(f"{argument} field '{{{name}}}' has a nested field in its format spec")
            if root not in fields:
                fields.append(root)
            pos = fields.index(root)
            if spec or conv:
                raw.add(root)
            out.append("{" + str(pos) + (("!" + conv) if conv else "") + ((":" + spec) if spec else "") + "}")
        return cls(text, tuple(fields), "".join(out), frozenset(raw), "".join(literal))

    def check_columns(self, columns: Sequence[Any], *, argument: str = "template") -> None:
        """Raise :class:`MissingColumnError` naming fields that are not columns."""
        have = {str(c) for c in columns}
        missing = [f for f in self.fields if f not in have]
        if missing:
            raise MissingColumnError(missing, list(columns), where=argument)

    def render(self, columns: Dict[str, List[Any]], n: int, skip: Optional[Dict[int, Any]] = None) -> List[Optional[str]]:
        """Render ``n`` rows from display-ready column lists (see :func:`display_strings`).

        Rows whose position is in ``skip`` are not rendered (``None``).
        """
        if not self.fields:
            text = self.compiled.format()
            return [None if skip and i in skip else text for i in range(n)]
        fmt = self.compiled.format
        cols = [columns[f] for f in self.fields]
        if skip:
            return [None if i in skip else fmt(*vals) for i, vals in enumerate(zip(*cols))]
        if len(cols) == 1:
            return [fmt(v) for v in cols[0]]
        return [fmt(*vals) for vals in zip(*cols)]


def _float_text(v) -> str:
    if math.isfinite(v) and float(v).is_integer() and abs(v) < 1e16:
        return str(int(v))
    return str(v)


def display_strings(col: pd.Series) -> List[Any]:
    """Turn a column into the strings a user expects to see in a prompt.

    Integers stay integers (``1994``, also in a float column that only holds
    whole numbers because of missing values), dates without a time print as
    dates, lists and dicts print as JSON. Missing values come back as ``None``;
    callers mask them out beforehand.

    Examples
    --------
    >>> display_strings(pd.Series([1994, None], dtype="Int64"))
    ['1994', None]
    >>> display_strings(pd.Series([1994.0, float("nan"), 2.5]))
    ['1994', None, '2.5']
    >>> display_strings(pd.Series([["a", "b"], {"k": 1}]))
    ['["a","b"]', '{"k":1}']
    """
    mask = col.isna().to_numpy()
    kind = col.dtype.kind
    if kind in "iu" or str(col.dtype) in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"):
        vals = col.astype(object).tolist()
        out = [None if m else str(int(v)) for v, m in zip(vals, mask)]
        return out
    if kind == "f" or str(col.dtype) in ("Float32", "Float64"):
        # Keep the column's precision: a float32 0.1 prints as 0.1, as the frame shows it.
        np_type = np.float32 if str(col.dtype).lower() == "float32" else np.float64
        vals = col.to_numpy(dtype=np_type, na_value=np.nan)
        return [None if m else _float_text(v) for v, m in zip(vals, mask)]
    if kind == "M":
        text = col.astype(str).tolist()
        return [None if m else t for t, m in zip(text, mask)]
    vals = col.tolist()
    if pd.api.types.is_string_dtype(col.dtype) and col.dtype != object:
        # A string column: every present value is already a str (the common, hot case).
        return [None if m else v for v, m in zip(vals, mask)] if mask.any() else vals
    out: List[Any] = []
    for v, m in zip(vals, mask):
        if m:
            out.append(None)
        elif isinstance(v, str):
            out.append(v)
        elif isinstance(v, (list, dict, tuple)):
            out.append(orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode())
        elif isinstance(v, np.ndarray):
            out.append(orjson.dumps(v.tolist()).decode())
        elif isinstance(v, float):
            out.append(_float_text(v))
        else:
            out.append(str(v))
    return out


def missing_mask(col: pd.Series) -> np.ndarray:
    """Boolean array: True where the cell is missing (NaN, None, NA, NaT)."""
    return col.isna().to_numpy()


def image_part(ref: str, detail: Optional[str] = None) -> Tuple[Optional[dict], Optional[str]]:
    """Build an ``image_url`` content part from a URL or a local file path.

    Returns ``(part, None)`` or ``(None, reason)`` when the image cannot be used
    (a missing local file becomes that row's error cell, not an exception).

    Examples
    --------
    >>> image_part("https://example.com/a.png")[0]["image_url"]["url"]
    'https://example.com/a.png'
    >>> image_part("no/such/file.png")[1]
    "image file not found: 'no/such/file.png'"
    """
    ref = str(ref).strip()
    if ref.startswith(("http://", "https://", "data:")):
        url = ref
    else:
        path = os.path.expanduser(ref[7:] if ref.startswith("file://") else ref)
        if not os.path.isfile(path):
            return None, f"image file not found: {ref!r}"
        mime = mimetypes.guess_type(path)[0]
        if not mime or not mime.startswith("image/"):
            return None, f"not an image file (unknown type): {ref!r}"
        with open(path, "rb") as fh:
            data = base64.b64encode(fh.read()).decode("ascii")
        url = f"data:{mime};base64,{data}"
    img: dict = {"url": url}
    if detail:
        img["detail"] = detail
    return {"type": "image_url", "image_url": img}, None

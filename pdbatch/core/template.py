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

import math
import string
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import orjson
import pandas as pd

from ..errors import MissingColumnError, TemplateError
from .images import IMAGE_MAX_BYTES, image_part, image_url_problem

__all__ = ["Template", "display_strings", "image_part", "image_url_problem", "SERIES_FIELD", "IMAGE_MAX_BYTES"]

#: Name under which a Series' values are visible to a template.
SERIES_FIELD = "value"
_FORMATTER = string.Formatter()
#: Strings checked per join for lone surrogates (bounds the memory of the check).
_CHUNK = 65536


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
    literal_text : str
        The text outside the fields, braces unescaped.
    argument : str
        The argument the template came from (``template``, ``system``,
        ``images``), named in error messages.

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
    argument: str = field(default="template", compare=False)

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
        bad = _first_unencodable([text])
        if bad is not None:
            raise TemplateError(f"{argument} holds a lone surrogate ({bad[1]!r}), which cannot be sent as UTF-8; "
                                f"remove it, e.g. {argument}.encode('utf-8', 'replace').decode()")
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
        return cls(text, tuple(fields), "".join(out), frozenset(raw), "".join(literal), argument)

    def check_columns(self, columns: Sequence[Any], *, argument: str = "template") -> None:
        """Raise :class:`MissingColumnError` naming fields that are not columns."""
        have = {str(c) for c in columns}
        missing = [f for f in self.fields if f not in have]
        if missing:
            raise MissingColumnError(missing, list(columns), where=argument)

    def render(self, columns: Dict[str, List[Any]], n: int, skip: Optional[Dict[int, Any]] = None,
               ids: Optional[Sequence[str]] = None) -> List[Optional[str]]:
        """Render ``n`` rows from display-ready column lists (see :func:`display_strings`).

        Rows whose position is in ``skip`` are not rendered (``None``). A
        format spec that fails on a value raises :class:`TemplateError`
        naming the column and the first such row (its custom_id from ``ids``).
        """
        if not self.fields:
            text = self.compiled.format()
            return [None if skip and i in skip else text for i in range(n)]
        fmt = self.compiled.format
        cols = [columns[f] for f in self.fields]
        try:
            if skip:
                return [None if i in skip else fmt(*vals) for i, vals in enumerate(zip(*cols))]
            if len(cols) == 1:
                return [fmt(v) for v in cols[0]]
            return [fmt(*vals) for vals in zip(*cols)]
        except (ValueError, TypeError) as err:
            raise self._format_error(cols, skip, ids, err) from None

    def _format_error(self, cols: List[List[Any]], skip: Optional[Dict[int, Any]], ids: Optional[Sequence[str]],
                      err: Exception) -> TemplateError:
        """The :class:`TemplateError` for the first row whose values the format specs refuse."""
        fields = [(int(name), spec, conv) for _, name, spec, conv in _FORMATTER.parse(self.compiled)
                  if name is not None and (spec or conv)]
        for pos, vals in enumerate(zip(*cols)):
            if skip and pos in skip:
                continue
            for k, spec, conv in fields:
                one = "{0" + ("!" + conv if conv else "") + (":" + spec if spec else "") + "}"
                try:
                    one.format(vals[k])
                except (ValueError, TypeError) as cause:
                    where = f"the row with index label {ids[pos]!r}" if ids is not None else f"row {pos}"
                    return _spec_error(self.argument, self.fields[k], one[2:-1], vals[k], where, cause)
        return TemplateError(f"{self.argument} cannot be rendered: {err}")


def _spec_error(argument: str, name: str, spec: str, value: Any, where: str, cause: Exception) -> TemplateError:
    """A :class:`TemplateError` for the field ``{name<spec>}`` failing on ``value`` at ``where``."""
    code = spec[-1] if ":" in spec else ""
    if isinstance(value, float) and code and code in "bcdoxXn":
        fix = (f"the column holds floats (whole numbers with missing values are stored as floats): write "
               f"{{{name}}} without the spec (whole floats print as integers) or convert the column with "
               f"df[{name!r}] = df[{name!r}].astype('Int64')")
    elif isinstance(value, str) and code and code in "eEfFgGn%bcdoxX":
        fix = f"the column holds text: convert it with df[{name!r}] = pd.to_numeric(df[{name!r}]), or drop the spec"
    else:
        fix = f"convert column {name!r} to a type the spec accepts, or drop the spec"
    return TemplateError(f"{argument} field '{{{name}{spec}}}' cannot format column {name!r} at {where}: value "
                         f"{repr(value)[:80]} ({type(value).__name__}) was refused ({cause}); {fix}")


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
        out = [None if m else v for v, m in zip(vals, mask)] if mask.any() else vals
        # Arrow-backed strings are valid UTF-8 by construction; Python-backed ones may hold surrogates.
        return out if getattr(col.dtype, "storage", None) == "pyarrow" else _checked(out, col)
    out: List[Any] = []
    try:
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
    except orjson.JSONEncodeError as err:
        if "surrogate" in str(err):
            raise _surrogate_error(col, len(out), "in a list or dict") from None
        raise TemplateError(f"column {col.name!r} cannot be written as JSON at the row with index label "
                            f"{_label(col.index, len(out))!r} ({err}); convert its values to text first") from None
    return _checked(out, col)


def _first_unencodable(strings: Sequence[Optional[str]]) -> Optional[Tuple[int, str]]:
    """``(position, character)`` of the first lone surrogate in ``strings`` (``None`` entries allowed).

    All-ASCII text is passed by one C-level scan; else one join and one
    UTF-8 encoding per chunk; rows are looked at one by one only in a chunk
    that fails.
    """
    if all(map(str.isascii, filter(None, strings))):
        return None
    for start in range(0, len(strings), _CHUNK):
        chunk = strings[start:start + _CHUNK]
        joined = "".join(filter(None, chunk))
        if joined.isascii():
            continue
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            for i, text in enumerate(chunk):
                try:
                    (text or "").encode("utf-8")
                except UnicodeEncodeError as err:
                    return start + i, text[err.start]
    return None


def _checked(strings: List[Any], col: pd.Series) -> List[Any]:
    """``strings``, once sure none holds a lone surrogate; else a :class:`TemplateError` naming the row."""
    bad = _first_unencodable(strings)
    if bad is not None:
        raise _surrogate_error(col, bad[0], f"({bad[1]!r})")
    return strings


def _label(index: pd.Index, pos: int) -> Any:
    """The index label at ``pos`` as a plain Python value (``12``, not ``np.int64(12)``)."""
    return index[pos:pos + 1].tolist()[0]


def _surrogate_error(col: pd.Series, pos: int, what: str) -> TemplateError:
    name = col.name
    return TemplateError(
        f"column {name!r} holds a lone surrogate {what} at the row with index label {_label(col.index, pos)!r}, which "
        f"cannot be sent as UTF-8 (text decoded with errors='surrogateescape' often has them); clean the column, "
        f"e.g. df[{name!r}] = df[{name!r}].str.encode('utf-8', 'replace').str.decode('utf-8')")


def missing_mask(col: pd.Series) -> np.ndarray:
    """Boolean array: True where the cell is missing (NaN, None, NA, NaT)."""
    return col.isna().to_numpy()

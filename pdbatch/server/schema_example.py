"""A deterministic instance of a JSON schema, for engines that need no model.

:func:`example_from_schema` is what :func:`pdbatch.engines.echo_engine`
answers under ``response_format={"type": "json_schema", ...}``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional, Union

__all__ = ["example_from_schema"]

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "time": "00:00:00Z",
    "email": "user@example.com", "uri": "https://example.com", "uuid":
    "00000000-0000-4000-8000-000000000000", "hostname": "example.com", "ipv4": "127.0.0.1",
}
_MAX_DEPTH = 8


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while isinstance(schema, Mapping) and "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref are supported, got {ref!r}")
        node: Any = root
        for key in [k for k in ref[1:].split("/") if k]:
            node = node[key.replace("~1", "/").replace("~0", "~")]
        schema, seen = node, seen + 1
    return schema


def _number(schema: Mapping[str, Any], integer: bool, index: int) -> Union[int, float]:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if schema.get("exclusiveMinimum") is not None and not isinstance(schema["exclusiveMinimum"], bool):
        lo = schema["exclusiveMinimum"] + (1 if integer else 0.5)
    if schema.get("exclusiveMaximum") is not None and not isinstance(schema["exclusiveMaximum"], bool):
        hi = schema["exclusiveMaximum"] - (1 if integer else 0.5)
    value: float = (lo if lo is not None else 0) + index
    if hi is not None and value > hi:
        value = hi if lo is None else (lo + hi) / 2
    step = schema.get("multipleOf")
    if step:
        value = math.ceil(value / step) * step
        if hi is not None and value > hi:
            value -= step
    return int(math.ceil(value)) if integer else float(value)


def _string(schema: Mapping[str, Any], text: str, index: int) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    value = (text or "example") + (str(index) if index else "")
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    if len(value) < lo:
        value = value + "x" * (lo - len(value))
    value = value[:hi] if hi is not None else value
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and not _matches(pattern, value):
        value = _pattern_example(pattern) or value
    return value


def _matches(pattern: str, value: str) -> bool:
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return True  # not a Python regex: leave the value alone


_CANDIDATES = "aeA0 x.-_"


def _in_class(c: str, items) -> bool:
    """Whether character ``c`` is in a parsed regex character class."""
    hit, negate = False, False
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            hit = hit or ord(c) == av
        elif name == "RANGE":
            hit = hit or av[0] <= ord(c) <= av[1]
        elif name == "CATEGORY":
            kind = str(av)
            test = c.isdigit() if "DIGIT" in kind else c.isspace() if "SPACE" in kind else (c.isalnum() or c == "_")
            hit = hit or (test != ("NOT" in kind))
    return hit != negate


def _regex_example(items) -> str:
    out = []
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(av))
        elif name in ("NOT_LITERAL", "ANY"):
            out.append(next(c for c in _CANDIDATES if name == "ANY" or ord(c) != av))
        elif name == "IN":
            out.append(next(c for c in _CANDIDATES if _in_class(c, av)))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            out.append(_regex_example(av[2]) * av[0])
        elif name == "SUBPATTERN":
            out.append(_regex_example(av[-1]))
        elif name == "BRANCH":
            out.append(_regex_example(av[1][0]))
        elif name != "AT":
            raise ValueError(name)
    return "".join(out)


def _pattern_example(pattern: str) -> Optional[str]:
    """A short string matching ``pattern`` (shortest repeats, first alternatives), or None."""
    try:
        from re import _parser  # type: ignore[attr-defined]  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as _parser  # type: ignore[no-redef]
    try:
        value = _regex_example(_parser.parse(pattern))
    except Exception:  # an unusual construct: the pattern is not honoured
        return None
    return value if _matches(pattern, value) else None


def _example(schema: Any, root: Mapping[str, Any], text: str, depth: int, index: int) -> Any:
    if schema is True or schema is None:
        return text or "example"
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][min(index, len(schema["enum"]) - 1)]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [_resolve(s, root) for s in schema[key]]
            non_null = [s for s in options if s.get("type") != "null"]
            pick = non_null[0] if non_null and depth < _MAX_DEPTH else options[-1]
            return _example(pick, root, text, depth + 1, index)
    if "allOf" in schema:
        merged: dict = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root))
        return _example(merged, root, text, depth + 1, index)
    kind = schema.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        kind = non_null[0] if non_null and depth < _MAX_DEPTH else kind[0]
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        keep = props if depth < _MAX_DEPTH else {k: v for k, v in props.items() if k in required}
        return {k: _example(v, root, text, depth + 1, 0) for k, v in keep.items()}
    if kind == "array":
        prefix = schema.get("prefixItems") or []
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        n = max(lo, len(prefix), 0 if depth >= _MAX_DEPTH else (2 if schema.get("uniqueItems") else 1))
        if hi is not None:
            n = min(n, hi)
        item = schema.get("items", {})
        return [_example(prefix[i] if i < len(prefix) else item, root, text, depth + 1, i)
                for i in range(n)]
    if kind == "string":
        return _string(schema, text, index)
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer", index)
    if kind == "boolean":
        return index % 2 == 0
    return None


def example_from_schema(schema: Mapping[str, Any], text: str = "") -> Any:
    """A deterministic instance of a JSON schema.

    Supports objects (every property is filled), strings (``enum`` picks the
    first value, common ``format`` values, ``minLength``/``maxLength``),
    integers and numbers (bounds and ``multipleOf``), booleans, arrays
    (1 item, 2 when ``uniqueItems``, within ``minItems``/``maxItems``; tuple
    ``prefixItems``), ``null`` and nullable types, ``const``,
    ``anyOf``/``oneOf``/``allOf`` and local ``$ref`` into ``$defs`` (as
    pydantic emits). Plain strings carry ``text``; when that does not match
    the string's ``pattern``, a short string made from the pattern
    (shortest repeats, first alternatives) stands in. Recursive schemas stop
    growing after a few levels.

    Examples
    --------
    >>> example_from_schema({"type": "object", "properties": {
    ...     "label": {"enum": ["pos", "neg"]}, "score": {"type": "integer", "minimum": 1},
    ...     "tags": {"type": "array", "items": {"type": "string"}}}}, "hi")
    {'label': 'pos', 'score': 1, 'tags': ['hi']}
    >>> example_from_schema({"type": "string", "pattern": "^[A-Z][^.!?]{3,9}[.!?]$"}, "hi")
    'Aaaa.'
    """
    return _example(schema, schema, text, 0, 0)

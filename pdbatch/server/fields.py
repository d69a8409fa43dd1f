"""Field checkers of the local server's request validation (:mod:`pdbatch.server.validate`).

Each checker is ``check(value, param)``: it returns when ``value`` is what the
hosted API accepts for the field named ``param`` (the API's own naming, e.g.
``messages[0].content[1].image_url.url``) and raises otherwise an
:class:`~pdbatch.errors.EngineError` 400 worded as the API words it, with the
API's ``code``: ``missing_required_parameter``, ``invalid_type``,
``invalid_value``, ``integer_below_min_value``, ``decimal_above_max_value``,
``empty_array``, ``array_above_max_length``, ``invalid_image_url``, and
``invalid_json_schema`` for a strict ``json_schema`` that structured outputs
refuse (an object without ``additionalProperties: false``, a property not
in ``required``, a root that is not an object).

Examples
--------
>>> TEMPERATURE(0.7, "temperature")
>>> TEMPERATURE(3, "temperature")
Traceback (most recent call last):
...
pdbatch.errors.EngineError: Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Callable, Optional

import orjson

from ..core.images import image_url_problem
from ..errors import EngineError

__all__ = ["fail", "missing", "wrong_type", "bad_value", "typed", "ranged", "enum", "STR", "BOOL", "OBJ",
           "ARR", "TEMPERATURE", "TOP_P", "PENALTY", "POSITIVE", "model_name", "nonempty", "stop",
           "metadata", "tools", "tool_choice", "response_format", "image_url"]

_KINDS = {type(None): "null", bool: "a boolean", int: "an integer", float: "a decimal",
          str: "a string", list: "an array", dict: "an object"}
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def fail(code: str, message: str, param: Optional[str]) -> EngineError:
    """The 400 ``invalid_request_error`` the API answers, with ``code`` and ``param``."""
    return EngineError(400, code, message, param=param)


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), "a " + type(value).__name__)


def missing(param: str) -> EngineError:
    """The error for a required field that is absent."""
    return fail("missing_required_parameter", f"Missing required parameter: '{param}'.", param)


def wrong_type(param: str, expected: str, value: Any) -> EngineError:
    """The error for a field of the wrong JSON type (``expected`` is e.g. ``"an integer"``)."""
    return fail("invalid_type", f"Invalid type for '{param}': expected {expected}, but got "
                                f"{_kind(value)} instead.", param)


def bad_value(param: str, value: Any, allowed: tuple) -> EngineError:
    """The error for a string outside its enumeration ``allowed``."""
    names = [f"'{a}'" for a in allowed]
    listed = ", ".join(names[:-1]) + f", and {names[-1]}" if len(names) > 1 else names[0]
    return fail("invalid_value", f"Invalid value for '{param}': {value!r}. Supported values are: "
                                 f"{listed}.", param)


# -- field checkers: check(value, param) raises or returns ----------------------
# JSON values come as exact types, so ``type(value) in exact`` is the fast path;
# isinstance is the fallback for subclasses (never for bool where a number is asked).
def typed(types: Any, expected: str) -> Callable[[Any, str], None]:
    """A checker requiring a value of ``types`` (a bool is never a number)."""
    exact = frozenset(types if isinstance(types, tuple) else (types,))
    no_bool = bool not in exact

    def check(value: Any, param: str) -> None:
        if type(value) not in exact and (not isinstance(value, types) or (no_bool and isinstance(value, bool))):
            raise wrong_type(param, expected, value)
    return check


def ranged(integer: bool, lo: Optional[float] = None, hi: Optional[float] = None
           ) -> Callable[[Any, str], None]:
    """A checker requiring an integer (``integer=True``) or a number within ``[lo, hi]``."""
    word, types = ("integer", int) if integer else ("decimal", (int, float))
    base = typed(types, "an integer" if integer else "a decimal")

    def check(value: Any, param: str) -> None:
        base(value, param)
        if lo is not None and value < lo:
            raise fail(f"{word}_below_min_value", f"Invalid '{param}': {word} below minimum value. "
                       f"Expected a value >= {lo}, but got {value} instead.", param)
        if hi is not None and value > hi:
            raise fail(f"{word}_above_max_value", f"Invalid '{param}': {word} above maximum value. "
                       f"Expected a value <= {hi}, but got {value} instead.", param)
    return check


def enum(*allowed: str) -> Callable[[Any, str], None]:
    """A checker requiring one of the strings ``allowed``."""
    accepted = frozenset(allowed)

    def check(value: Any, param: str) -> None:
        if type(value) is str and value in accepted:
            return
        if not isinstance(value, str):
            raise wrong_type(param, "a string", value)
        if value not in accepted:
            raise bad_value(param, value, allowed)
    return check


STR, BOOL = typed(str, "a string"), typed(bool, "a boolean")
OBJ, ARR = typed(dict, "an object"), typed(list, "an array")
TEMPERATURE, TOP_P, PENALTY = ranged(False, 0, 2), ranged(False, 0, 1), ranged(False, -2, 2)
POSITIVE = ranged(True, 1)


def model_name(value: Any, param: str) -> None:
    """``model``: a non-empty string."""
    if not isinstance(value, str):
        raise wrong_type(param, "a string", value)
    if not value:
        raise fail("invalid_value", f"Invalid '{param}': the model name is empty.", param)


def nonempty(value: Any, param: str) -> None:
    """An array with at least one item."""
    if not value:
        raise fail("empty_array", f"Invalid '{param}': empty array. Expected an array with minimum "
                                  "length 1, but got an empty array instead.", param)


def stop(value: Any, param: str) -> None:
    """``stop``: a string or at most 4 strings."""
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise wrong_type(param, "a string or an array of strings", value)
    if len(value) > 4:
        raise fail("array_above_max_length", f"Invalid '{param}': array too long. Expected an array "
                    f"with maximum length 4, but got an array with length {len(value)} instead.", param)


def metadata(value: Any, param: str) -> None:
    """``metadata``: at most 16 string values."""
    OBJ(value, param)
    for key, item in value.items():
        if not isinstance(item, str):
            raise wrong_type(f"{param}.{key}", "a string", item)
    if len(value) > 16:
        raise fail("object_above_max_properties", f"Invalid '{param}': at most 16 keys are "
                                                  f"allowed, got {len(value)}.", param)


def tools(value: Any, param: str) -> None:
    """``tools``: an array of objects, each with a ``type``."""
    ARR(value, param)
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise wrong_type(f"{param}[{i}]", "an object", tool)
        if "type" not in tool:
            raise missing(f"{param}[{i}].type")


def tool_choice(value: Any, param: str) -> None:
    """``tool_choice``: ``none``, ``auto``, ``required`` or an object."""
    if isinstance(value, str):
        enum("none", "auto", "required")(value, param)
    elif not isinstance(value, dict):
        raise wrong_type(param, "a string or an object", value)


_FORMAT_TYPE = enum("text", "json_object", "json_schema")
_SCHEMA_FIELDS = (("schema", OBJ), ("strict", BOOL), ("description", STR))


def response_format(fmt: Any, param: str, schema_at: str) -> None:
    """``response_format`` (``schema_at="json_schema"``) or the Responses ``text.format`` (``""``)."""
    OBJ(fmt, param)
    kind = fmt.get("type")
    if kind is None:
        raise missing(f"{param}.type")
    if kind != "json_schema":
        if kind != "text" and kind != "json_object":
            _FORMAT_TYPE(kind, f"{param}.type")
        return
    spec = fmt.get(schema_at) if schema_at else fmt
    if type(spec) is not dict:
        where = f"{param}.{schema_at}" if schema_at else param
        raise missing(where) if spec is None else wrong_type(where, "an object", spec)
    name = spec.get("name")
    if type(name) is not str or not _NAME.fullmatch(name):
        where = f"{param}.{schema_at}.name" if schema_at else f"{param}.name"
        if name is None:
            raise missing(where)
        STR(name, where)
        raise fail("invalid_value", f"Invalid '{where}': {name!r} must be 1 to 64 characters of a-z, "
                                    "A-Z, 0-9, '_' or '-'.", where)
    for key, check in _SCHEMA_FIELDS:
        if spec.get(key) is not None:
            check(spec[key], f"{param}.{schema_at}.{key}" if schema_at else f"{param}.{key}")
    if spec.get("strict") is True and spec.get("schema") is not None:
        problem = _strict_problem(spec["schema"])
        if problem is not None:  # the API names response_format for chat, text.format.schema for responses
            raise fail("invalid_json_schema", f"Invalid schema for response_format '{name}': {problem}",
                       param if schema_at else f"{param}.schema")


_UNSEEN = object()
_STRICT_SEEN: dict = {}  # encoded schema -> its problem; the lines of a batch share one schema


def _strict_problem(schema: dict) -> Optional[str]:
    """Why strict mode refuses ``schema`` (the first rule it breaks), or ``None``."""
    key = orjson.dumps(schema)
    problem = _STRICT_SEEN.get(key, _UNSEEN)
    if problem is _UNSEEN:  # threads may race here: the worst is the same walk done twice
        problem = _walk_strict(schema)
        if len(_STRICT_SEEN) >= 256:
            _STRICT_SEEN.clear()
        _STRICT_SEEN[key] = problem
    return problem


def _walk_strict(schema: dict) -> Optional[str]:
    if schema.get("type") != "object":
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{schema.get('type')}\"'."
    todo: deque = deque([((), schema)])
    while todo:
        context, node = todo.popleft()
        if not isinstance(node, dict):
            continue
        props = node.get("properties")
        if node.get("type") == "object" or isinstance(props, dict):
            if node.get("additionalProperties") is not False:
                return f"In context={context!r}, 'additionalProperties' is required to be supplied and to be false."
            required = node.get("required") if isinstance(node.get("required"), list) else []
            absent = [k for k in props or {} if k not in required]
            if absent:
                return (f"In context={context!r}, 'required' is required to be supplied and to be an array "
                        f"including every key in properties. Missing '{absent[0]}'.")
            todo.extend((context + ("properties", k), v) for k, v in (props or {}).items())
        if isinstance(node.get("items"), dict):
            todo.append((context + ("items",), node["items"]))
        for key in ("anyOf", "allOf"):
            todo.extend((context + (key, str(i)), v) for i, v in enumerate(node.get(key) or []))
        for key in ("$defs", "definitions"):
            todo.extend((context + (key, k), v) for k, v in (node.get(key) or {}).items())
    return None


def image_url(link: Any, param: str) -> None:
    """An image URL the API fetches: ``http(s)://`` or ``data:image/...`` (see ``image_url_problem``)."""
    if not isinstance(link, str):
        raise fail("invalid_value", f"Invalid '{param}': expected a string URL.", param)
    problem = image_url_problem(link)
    if problem is not None:
        raise fail("invalid_image_url", f"Invalid image URL '{param}': {problem}.", param)

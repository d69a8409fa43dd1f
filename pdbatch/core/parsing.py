"""Response formats: what to ask for, and how to read each answer.

:func:`response_format` normalises the user's ``response_format`` argument
(``None``, ``"json"``, a JSON Schema dict, a full OpenAI ``response_format``
dict, or a pydantic model class) into a :class:`ResponseFormat`. Its
:meth:`ResponseFormat.parse` turns one :class:`~pdbatch.records.Result` into
either field values or a short error reason: per-row failures are data, never
exceptions.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jsonschema
import orjson

try:  # a compiled validator: ~100x faster than pure-Python jsonschema on the join's hot path
    import jsonschema_rs as _rs
except ImportError:  # pragma: no cover - the pure-Python validator is always there
    _rs = None

from ..errors import SchemaError
from .answers import Answers, answer_reason
from .records import Result

__all__ = ["ResponseFormat", "response_format", "strict_schema", "answer_text", "NOT_PERMITTED"]

_NAME_RE = re.compile(r"[^a-zA-Z0-9_-]+")


def _schema_name(name: Optional[str]) -> str:
    name = _NAME_RE.sub("_", name or "").strip("_")[:64]
    return name or "response"


@dataclass(frozen=True)
class ResponseFormat:
    """A normalised ``response_format``.

    Attributes
    ----------
    kind : {"text", "json", "schema", "embedding"}
    body : dict or None
        What goes into each request body's ``response_format``.
    columns : list of str or None
        Output columns known before anything is sent (schema properties in
        schema order); None for text and for free JSON mode.
    schema : dict or None
        The JSON Schema answers are validated against (the user's own).
    """

    kind: str
    body: Optional[dict] = None
    columns: Optional[Tuple[str, ...]] = None
    schema: Optional[dict] = None
    model: Any = None
    _validator: Any = field(default=None, compare=False, repr=False)
    _fast: Any = field(default=None, compare=False, repr=False)

    @property
    def source(self) -> Any:
        """A JSON-able form that :func:`response_format` turns back into this format."""
        if self.kind in ("text", "embedding"):
            return None
        if self.kind == "json":
            return "json"
        if self.model is not None:  # the class cannot be stored: its (strict) JSON Schema stands in
            return self.body
        return self.body if self.body.get("json_schema", {}).get("schema") is self.schema else self.schema

    def parse(self, result: Result) -> Tuple[Any, Optional[str]]:
        """Read one :class:`Result`; see :meth:`parse_text` for what comes back."""
        text, err = answer_text(result)
        if err is not None:
            return None, err
        return self.parse_text(text)

    def text_parser(self):
        """``parse_text`` specialised for this format: the join's per-row hot path."""
        if self.kind in ("text", "embedding"):  # an embedding's "text" is already its vector
            return as_is
        fast, loads, slow = self._fast, orjson.loads, self.parse_text
        if self.model is not None or (self._validator is not None and fast is None):
            return slow
        is_valid = fast.is_valid if fast is not None else (lambda obj: True)

        def parse(text: str) -> Tuple[Any, Optional[str]]:
            try:
                obj = loads(text)
            except orjson.JSONDecodeError:
                return slow(text)
            if type(obj) is dict and is_valid(obj):
                return obj, None
            return slow(text)  # the careful path words the reason

        def many(texts: List[str]) -> Tuple[list, list]:
            """``(values, errors)`` of many answers: decode and check them in bulk, word failures one by one."""
            try:
                objs = list(map(loads, texts))
            except orjson.JSONDecodeError:  # some answer is not JSON: go one by one
                return one_by_one(parse, texts)
            valid = map(is_valid, objs) if fast is not None else (True for _ in objs)
            errors = [None] * len(objs)
            for i in [i for i, (obj, v) in enumerate(zip(objs, valid)) if not v or type(obj) is not dict]:
                objs[i], errors[i] = slow(texts[i])
            return objs, errors

        parse.many = many
        return parse

    def parse_text(self, text: str) -> Tuple[Any, Optional[str]]:
        """Turn one answer's text into a value.

        Returns
        -------
        (value, error)
            For text, ``value`` is the string; for JSON kinds a dict of
            top-level fields (for a pydantic model, its fields dumped as JSON
            values, ``model_dump(mode="json")``: an Enum field gives its value).
            ``error`` is None on success, else a short reason and ``value``
            is None.
        """
        if self.kind == "text":
            return text, None
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            snippet = text[:80].replace("\n", " ")
            return None, f"invalid JSON ({e.args[0] if e.args else e}): {snippet!r}"
        if not isinstance(obj, dict):
            return None, f"expected a JSON object, got {type(obj).__name__}"
        if self.model is not None:
            try:
                inst = self.model.model_validate(obj)
            except Exception as e:  # pydantic.ValidationError
                return None, "schema violation: " + _pydantic_reason(e)
            data = inst.model_dump(mode="json")  # JSON values (an Enum's value, not the member): Parquet-ready
            keys = _field_keys(self.model)
            return {keys.get(k, k): v for k, v in data.items()}, None
        if self._validator is not None:
            if self._fast is not None and self._fast.is_valid(obj):
                return obj, None
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(obj))
            if error is not None:
                where = "/" + "/".join(str(p) for p in error.absolute_path)
                return None, f"schema violation at {where}: {error.message[:200]}"
        return obj, None


def one_by_one(parse_text, texts: List[str]) -> Tuple[list, list]:
    """``(values, errors)`` of ``texts`` through a one-answer parser such as :meth:`ResponseFormat.parse_text`."""
    pairs = [parse_text(t) for t in texts]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def as_is(text: Any) -> Tuple[Any, None]:
    """The parser of text and embedding answers: the value is the answer itself."""
    return text, None


def _field_keys(model: Any) -> Dict[str, str]:
    """Field name -> the property name in the model's (validation) JSON Schema, i.e. its columns."""
    out = {}
    for name, info in getattr(model, "model_fields", {}).items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        out[name] = alias or name
    return out


def _pydantic_reason(e: Exception) -> str:
    errs = getattr(e, "errors", None)
    if callable(errs):
        items = errs()
        if items:
            first = items[0]
            loc = "/" + "/".join(str(p) for p in first.get("loc", ()))
            more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
            return f"{loc}: {first.get('msg')}{more}"
    return str(e)[:200]


def answer_text(result: Result) -> Tuple[Optional[str], Optional[str]]:
    """Return ``(content, None)`` of a chat answer, or ``(None, reason)``.

    Examples
    --------
    >>> r = Result("1", {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]})
    >>> answer_text(r)
    ('hi', None)
    >>> r = Result("1", {"choices": [{"message": {"content": "h"}, "finish_reason": "length"}]})
    >>> answer_text(r)[1]
    'truncated: finish_reason=length (raise max_completion_tokens)'
    """
    a = Answers.from_results([result])
    reason = answer_reason(a.status_code[0], a.content[0], a.finish_reason[0], a.refusal[0], a.has_choice[0],
                           a.error_code[0], a.error_message[0])
    return (None, reason) if reason is not None else (a.content[0], None)


#: Keywords OpenAI's strict mode refuses ("'uniqueItems' is not permitted", a 400 for every
#: row): :func:`strict_schema` leaves them out of the request; answers are still validated
#: against the schema as given, so a violation is an error cell.
NOT_PERMITTED = ("uniqueItems",)


def strict_schema(schema: Mapping[str, Any], *, drop: Tuple[str, ...] = NOT_PERMITTED) -> dict:
    """A copy of ``schema`` that OpenAI's strict structured outputs accept.

    Every object gets ``additionalProperties: false`` and lists all its
    properties as required (optional fields become required, which still
    validates against the original schema). The keywords in ``drop``
    (:data:`NOT_PERMITTED`) are left out: the answer is checked against them
    when it is validated. The local model passes ``drop=()``, its grammar
    enforces ``uniqueItems``.

    Examples
    --------
    >>> strict_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    {'type': 'object', 'properties': {'a': {'type': 'string'}}, 'additionalProperties': False, 'required': ['a']}
    >>> strict_schema({"type": "array", "items": {"type": "string"}, "uniqueItems": True})
    {'type': 'array', 'items': {'type': 'string'}}
    """
    out = copy.deepcopy(dict(schema))

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key in drop:
                node.pop(key, None)
            props = node.get("properties")
            if node.get("type") == "object" or isinstance(props, dict):
                if isinstance(props, dict):
                    node["additionalProperties"] = False
                    node["required"] = list(props)
            for key, value in list(node.items()):
                if key in ("properties", "$defs", "definitions", "patternProperties"):
                    if isinstance(value, dict):
                        for sub in value.values():
                            visit(sub)
                elif isinstance(value, (dict, list)):
                    visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(out)
    return out


def _is_pydantic_model(obj: Any) -> bool:
    return isinstance(obj, type) and hasattr(obj, "model_json_schema") and hasattr(obj, "model_validate")


def _columns_of(schema: Mapping[str, Any], argument: str) -> Tuple[str, ...]:
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise SchemaError(
            f"{argument}: the top level of the schema must be an object with 'properties' (its keys "
            f"become columns); wrap other types, e.g. {{'type': 'object', 'properties': {{'items': ...}}}}"
        )
    if not schema["properties"]:
        raise SchemaError(f"{argument}: the schema's 'properties' is empty; name at least one field")
    return tuple(schema["properties"])


def _check_schema(schema: Mapping[str, Any], argument: str):
    """Check ``schema``; return ``(validator, fast validator or None)``."""
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as err:
        where = "/" + "/".join(str(p) for p in err.absolute_path)
        raise SchemaError(
            f"{argument} is not a valid JSON Schema: {err.message} (at {where}); fix the schema"
        ) from err
    fast = None
    if _rs is not None:
        try:
            fast = _rs.validator_for(dict(schema), validate_formats=False)
        except Exception:  # a schema the compiled validator cannot take: the pure-Python one serves
            fast = None
    return cls(schema), fast


def response_format(rf: Any, *, argument: str = "response_format") -> ResponseFormat:
    """Normalise a ``response_format`` argument; raise :class:`SchemaError` if malformed.

    Parameters
    ----------
    rf : None, "text", "json", dict or pydantic model class
        ``None``/``"text"`` for plain text; ``"json"`` for JSON mode; a JSON
        Schema dict, or a full ``{"type": "json_schema", "json_schema": {...}}``
        dict, or a pydantic ``BaseModel`` subclass for structured output.

    Examples
    --------
    >>> response_format("json").body
    {'type': 'json_object'}
    >>> f = response_format({"title": "Movie", "type": "object",
    ...                      "properties": {"summary": {"type": "string"}}})
    >>> f.columns, f.body["json_schema"]["name"], f.body["json_schema"]["strict"]
    (('summary',), 'Movie', True)
    """
    if rf is None or rf == "text":
        return ResponseFormat("text")
    if rf == "json" or rf == {"type": "json_object"}:
        return ResponseFormat("json", {"type": "json_object"})
    if _is_pydantic_model(rf):
        try:
            schema = rf.model_json_schema()
        except Exception as err:
            raise SchemaError(f"{argument}: pydantic could not build a JSON Schema for {rf.__name__}: {err}") from err
        cols = _columns_of(schema, argument)
        body = {
            "type": "json_schema",
            "json_schema": {"name": _schema_name(rf.__name__), "schema": strict_schema(schema), "strict": True},
        }
        return ResponseFormat("schema", body, cols, schema, rf)
    if isinstance(rf, Mapping):
        if rf.get("type") == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, Mapping) or not isinstance(js.get("schema"), Mapping):
                raise SchemaError(
                    f"{argument}: a 'json_schema' response_format needs "
                    f"{{'json_schema': {{'name': ..., 'schema': {{...}}}}}}"
                )
            schema = dict(js["schema"])
            validator, fast = _check_schema(schema, argument)
            cols = _columns_of(schema, argument)
            body = {"type": "json_schema", "json_schema": dict(js)}
            body["json_schema"]["name"] = _schema_name(js.get("name") or schema.get("title"))
            return ResponseFormat("schema", body, cols, schema, None, validator, fast)
        if rf.get("type") in ("text",) and len(rf) == 1:
            return ResponseFormat("text")
        schema = dict(rf)
        validator, fast = _check_schema(schema, argument)
        cols = _columns_of(schema, argument)
        body = {
            "type": "json_schema",
            "json_schema": {"name": _schema_name(schema.get("title")), "schema": strict_schema(schema), "strict": True},
        }
        return ResponseFormat("schema", body, cols, schema, None, validator, fast)
    raise SchemaError(
        f"{argument} must be None, 'json', a JSON Schema dict or a pydantic BaseModel subclass; "
        f"got {rf!r}"
    )

"""Tests for pdbatch/parsing.py: response_format normalisation, strict schemas, reasons, parse_text."""

from __future__ import annotations

import copy
import enum
from typing import List, Optional

import pandas as pd
import pytest
from pydantic import BaseModel, Field

from pdbatch.errors import SchemaError
from pdbatch.core.answers import answer_reason
from pdbatch.core.parsing import ResponseFormat, answer_text, response_format, strict_schema
from pdbatch.core.records import Result


class Inner(BaseModel):
    name: str
    score: int


class Movie(BaseModel):
    title: str
    tags: List[str] = []
    inner: Inner
    items: List[Inner]
    note: Optional[str] = None


REVIEW = {
    "title": "Movie review!",
    "type": "object",
    "properties": {
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "genre": {"enum": ["drama", "comedy"]},
        "cast": {"$ref": "#/$defs/Cast"},
    },
    "required": ["rating"],
    "$defs": {"Cast": {"type": "object", "properties": {"lead": {"type": "string"}}, "required": ["lead"]}},
}


def chat(content, finish="stop", refusal=None, status=200):
    return Result("1", {"choices": [{"message": {"content": content, "refusal": refusal},
                                     "finish_reason": finish}]}, status_code=status)


# ----------------------------------------------------- response_format


@pytest.mark.parametrize("rf", [None, "text", {"type": "text"}])
def test_text_formats(rf):
    f = response_format(rf)
    assert f.kind == "text" and f.body is None and f.columns is None and f.schema is None
    assert f.parse_text("{not json") == ("{not json", None)


@pytest.mark.parametrize("rf", ["json", {"type": "json_object"}])
def test_json_mode(rf):
    f = response_format(rf)
    assert f.kind == "json"
    assert f.body == {"type": "json_object"}
    assert f.columns is None
    assert f.parse_text('{"a": [1], "b": null}') == ({"a": [1], "b": None}, None)


def test_dict_schema_normalised():
    original = copy.deepcopy(REVIEW)
    f = response_format(REVIEW)
    assert REVIEW == original  # the caller's schema is not touched
    assert f.kind == "schema"
    assert f.columns == ("rating", "genre", "cast")
    assert f.schema == REVIEW
    js = f.body["json_schema"]
    assert f.body["type"] == "json_schema"
    assert js["name"] == "Movie_review" and js["strict"] is True
    assert js["schema"]["additionalProperties"] is False
    assert js["schema"]["required"] == ["rating", "genre", "cast"]
    assert js["schema"]["$defs"]["Cast"]["additionalProperties"] is False


def test_dict_schema_without_title_is_named_response():
    f = response_format({"type": "object", "properties": {"a": {"type": "string"}}})
    assert f.body["json_schema"]["name"] == "response"


def test_schema_name_is_sanitised_and_capped():
    f = response_format({"title": "x" * 100 + " y", "type": "object", "properties": {"a": {}}})
    name = f.body["json_schema"]["name"]
    assert name == "x" * 64


def test_optional_fields_validate_against_the_users_schema():
    f = response_format(REVIEW)
    # strict body makes every field required, but answers are checked against the original
    assert f.parse_text('{"rating": 3}') == ({"rating": 3}, None)


def test_full_json_schema_dict_is_kept():
    rf = {"type": "json_schema", "json_schema": {
        "name": "my schema", "strict": True,
        "schema": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                   "required": ["a"], "additionalProperties": False}}}
    original = copy.deepcopy(rf)
    f = response_format(rf)
    assert rf == original
    assert f.kind == "schema" and f.columns == ("a", "b")
    assert f.body["json_schema"]["name"] == "my_schema"
    assert f.body["json_schema"]["schema"] == original["json_schema"]["schema"]  # not made strict behind the user's back
    assert f.parse_text('{"a": "x"}') == ({"a": "x"}, None)
    value, err = f.parse_text('{"a": 1}')
    assert value is None and err.startswith("schema violation at /a:")


def test_full_json_schema_name_falls_back_to_title():
    f = response_format({"type": "json_schema", "json_schema": {
        "schema": {"title": "Pet", "type": "object", "properties": {"a": {}}}}})
    assert f.body["json_schema"]["name"] == "Pet"


def test_pydantic_model():
    f = response_format(Movie)
    assert f.kind == "schema" and f.model is Movie
    assert f.columns == ("title", "tags", "inner", "items", "note")
    js = f.body["json_schema"]
    assert js["name"] == "Movie" and js["strict"] is True
    assert js["schema"]["required"] == ["title", "tags", "inner", "items", "note"]
    assert js["schema"]["additionalProperties"] is False
    inner = js["schema"]["$defs"]["Inner"]
    assert inner["additionalProperties"] is False and inner["required"] == ["name", "score"]


@pytest.mark.parametrize(
    "rf, match",
    [
        ({"type": "string"}, "top level of the schema must be an object"),
        ({"type": "object"}, "top level of the schema must be an object"),
        ({"type": "object", "properties": {}}, "'properties' is empty"),
        ({"type": "object", "properties": {"a": {"type": "nope"}}}, r"not a valid JSON Schema.*at /properties/a/type"),
        ({"type": "json_schema"}, "needs"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "needs"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}, "must be an object"),
        (42, "must be None, 'json', a JSON Schema dict or a pydantic BaseModel subclass"),
        ("xml", "got 'xml'"),
        (int, "got <class 'int'>"),
    ],
)
def test_malformed_formats_raise_schema_error(rf, match):
    with pytest.raises(SchemaError, match=match) as info:
        response_format(rf, argument="response_format")
    assert str(info.value).startswith("response_format")
    assert isinstance(info.value, ValueError)


def test_pydantic_model_whose_schema_is_not_an_object():
    from pydantic import RootModel

    class Names(RootModel[List[str]]):
        pass

    with pytest.raises(SchemaError, match="top level of the schema must be an object"):
        response_format(Names)


# ------------------------------------------------------------ strict_schema


def test_strict_schema_docstring_case():
    assert strict_schema({"type": "object", "properties": {"a": {"type": "string"}}}) == {
        "type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False, "required": ["a"]}


def test_strict_schema_reaches_nested_objects_and_leaves_input_alone():
    schema = {
        "type": "object",
        "properties": {
            "list": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer"}}}},
            "either": {"anyOf": [{"type": "object", "properties": {"y": {}}}, {"type": "null"}]},
            "ref": {"$ref": "#/definitions/D"},
        },
        "definitions": {"D": {"type": "object", "properties": {"z": {}}, "required": []}},
    }
    before = copy.deepcopy(schema)
    out = strict_schema(schema)
    assert schema == before
    assert out["properties"]["list"]["items"]["additionalProperties"] is False
    assert out["properties"]["list"]["items"]["required"] == ["x"]
    assert out["properties"]["either"]["anyOf"][0]["required"] == ["y"]
    assert out["properties"]["either"]["anyOf"][1] == {"type": "null"}
    assert out["definitions"]["D"]["required"] == ["z"]
    assert out["required"] == ["list", "either", "ref"]


def test_strict_schema_property_names_are_not_keywords():
    schema = {"type": "object", "properties": {"properties": {"type": "string"}, "type": {"type": "string"}}}
    out = strict_schema(schema)
    assert out["required"] == ["properties", "type"]
    assert out["properties"]["properties"] == {"type": "string"}
    assert out["properties"]["type"] == {"type": "string"}


# ---------------------------------------------------------- answer_reason


@pytest.mark.parametrize(
    "args, expected",
    [
        # status, content, finish, refusal, has_choice, error_code, error_message
        ((400, None, None, None, False, "context_length_exceeded", "too long"), "context_length_exceeded: too long"),
        ((None, None, None, None, False, "batch_expired", None), "batch_expired"),
        ((500, None, None, None, False, None, None), "http_500"),
        ((None, None, None, None, False, None, "  odd  "), "error: odd"),
        ((200, None, None, None, False, None, None), "malformed response: no choices"),
        ((200, None, "stop", "I can't", True, None, None), "refused: I can't"),
        ((200, "par", "length", None, True, None, None), "truncated: finish_reason=length (raise max_completion_tokens)"),
        ((200, None, "content_filter", None, True, None, None),
         "content_filter: the answer was withheld by the provider's filter"),
        ((200, None, "tool_calls", None, True, None, None), "tool_call: the answer is a tool call, not text"),
        ((200, None, "stop", None, True, None, None), "empty answer"),
        ((200, "ok", "stop", None, True, None, None), None),
        ((200, "", "stop", None, True, None, None), None),
        ((None, "ok", None, None, True, None, None), None),
    ],
)
def test_answer_reason(args, expected):
    assert answer_reason(*args) == expected


def test_refusal_reason_is_capped():
    reason = answer_reason(200, None, "stop", "x" * 500, True, None, None)
    assert reason == "refused: " + "x" * 200


def test_answer_text():
    assert answer_text(chat("hi")) == ("hi", None)
    assert answer_text(chat("h", "length")) == (None, "truncated: finish_reason=length (raise max_completion_tokens)")
    assert answer_text(chat(None, refusal="no")) == (None, "refused: no")
    expired = Result.from_line({"custom_id": "1", "response": None,
                                "error": {"code": "batch_expired", "message": "expired"}})
    assert answer_text(expired) == (None, "batch_expired: expired")


def test_parse_goes_through_answer_text():
    f = response_format("json")
    assert f.parse(chat('{"a": 1}')) == ({"a": 1}, None)
    assert f.parse(chat('{"a": 1', "length")) == (None, "truncated: finish_reason=length (raise max_completion_tokens)")
    assert response_format(None).parse(chat("plain")) == ("plain", None)


# ------------------------------------------------------------- parse_text


def test_invalid_json_reason_quotes_a_snippet():
    value, err = response_format("json").parse_text("Sure!\nHere is " + "x" * 200)
    assert value is None
    assert err.startswith("invalid JSON (")
    assert "'Sure! Here is " in err  # newlines flattened
    assert err.endswith("x" * (80 - len("Sure!\nHere is ")) + "'")


@pytest.mark.parametrize("text, kind", [("[1, 2]", "list"), ('"s"', "str"), ("3", "int"), ("null", "NoneType")])
def test_non_object_json_is_rejected(text, kind):
    for f in (response_format("json"), response_format(REVIEW), response_format(Movie)):
        assert f.parse_text(text) == (None, f"expected a JSON object, got {kind}")


@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"rating": 7}', "schema violation at /rating: 7 is greater than the maximum of 5"),
        ('{"rating": 3, "genre": "horror"}', "schema violation at /genre: 'horror' is not one of ['drama', 'comedy']"),
        ('{"genre": "drama"}', "schema violation at /: 'rating' is a required property"),
        ('{"rating": 3, "cast": {}}', "schema violation at /cast: 'lead' is a required property"),
        ('{"rating": 3, "cast": {"lead": 1}}', "schema violation at /cast/lead: 1 is not of type 'string'"),
        ('{"rating": "3"}', "schema violation at /rating: '3' is not of type 'integer'"),
    ],
)
def test_dict_schema_violations(text, reason):
    assert response_format(REVIEW).parse_text(text) == (None, reason)


def test_dict_schema_valid_answer_keeps_extra_keys():
    value, err = response_format(REVIEW).parse_text('{"rating": 5, "cast": {"lead": "A"}, "extra": true}')
    assert err is None
    assert value == {"rating": 5, "cast": {"lead": "A"}, "extra": True}


def test_pydantic_valid_nested_answer_dumps_to_dicts():
    text = '{"title": "T", "inner": {"name": "n", "score": 2}, "items": [{"name": "a", "score": 1}]}'
    value, err = response_format(Movie).parse_text(text)
    assert err is None
    assert value == {"title": "T", "tags": [], "inner": {"name": "n", "score": 2},
                     "items": [{"name": "a", "score": 1}], "note": None}


@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"title": "T", "inner": {"name": "n", "score": "x"}, "items": []}',
         "schema violation: /inner/score: Input should be a valid integer, unable to parse string as an integer"),
        ('{"title": "T", "inner": {"name": "n"}, "items": [{"name": 1}]}',
         "schema violation: /inner/score: Field required (+2 more)"),
        ('{"inner": {"name": "n", "score": 1}, "items": []}', "schema violation: /title: Field required"),
        ('{"title": "T", "inner": {"name": "n", "score": 1}, "items": [{"name": "a"}]}',
         "schema violation: /items/0/score: Field required"),
    ],
)
def test_pydantic_violations(text, reason):
    assert response_format(Movie).parse_text(text) == (None, reason)


def test_response_format_equality_ignores_validators():
    assert response_format(REVIEW) == response_format(copy.deepcopy(REVIEW))
    assert response_format("json") == ResponseFormat("json", {"type": "json_object"})


class Aliased(BaseModel):
    movie_title: str = Field(alias="title")


def test_pydantic_alias_keys_match_columns():
    # regression: columns came from the schema (alias 'title') but values were keyed by field name ('movie_title')
    f = response_format(Aliased)
    assert f.columns == ("title",)
    value, err = f.parse_text('{"title": "Heat"}')
    assert err is None
    assert tuple(value) == f.columns


# ------------------------------------------------------------- text_parser

SAMPLES = ['{"rating": 3}', '{"rating": 7}', '{"genre": "drama"}', '{"rating": 3, "cast": {"lead": 1}}',
           '{"title": "T", "inner": {"name": "n", "score": 2}, "items": []}', '{"title": 1}',
           '[1]', 'null', 'not json', '', '{"a": 1', 'plain text {x}']


@pytest.mark.parametrize("rf", [None, "json", REVIEW, Movie,
                                {"type": "json_schema", "json_schema": {"name": "r", "schema": REVIEW}}],
                         ids=["text", "json", "dict", "pydantic", "full"])
def test_text_parser_agrees_with_parse_text(rf):
    f = response_format(rf)
    parse = f.text_parser()
    for text in SAMPLES:
        assert parse(text) == f.parse_text(text), text
    many = getattr(parse, "many", None)
    if many is not None:  # the join's bulk path: same answers, whether or not every text decodes
        expected = [f.parse_text(t) for t in SAMPLES]
        assert list(zip(*many(SAMPLES))) == expected
        decodable = [t for t in SAMPLES if t not in ("not json", "", '{"a": 1', "plain text {x}")]
        assert list(zip(*many(decodable))) == [f.parse_text(t) for t in decodable]
        assert many([]) == ([], [])


class ValidationAliased(BaseModel):
    movie_title: str = Field(validation_alias="t")


class TwoAliases(BaseModel):
    movie_title: str = Field(alias="title", serialization_alias="out")


def test_pydantic_validation_alias_keys_match_columns():
    f = response_format(ValidationAliased)
    value, err = f.parse_text('{"t": "Heat"}')
    assert err is None
    assert tuple(value) == f.columns == ("t",)


def test_pydantic_serialization_alias_keys_match_columns():
    f = response_format(TwoAliases)
    value, err = f.parse_text('{"title": "Heat"}')
    assert err is None
    assert tuple(value) == f.columns == ("title",)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Size(int, enum.Enum):
    SMALL = 1
    LARGE = 2


class Painted(BaseModel):
    color: Color
    size: Size
    tags: List[Color]


def test_pydantic_enum_fields_come_back_as_their_json_values(tmp_path):
    fmt = response_format(Painted)
    text = '{"color": "red", "size": 2, "tags": ["blue", "red"]}'
    for parse in (fmt.parse_text, fmt.text_parser()):
        value, err = parse(text)
        assert err is None
        assert value == {"color": "red", "size": 2, "tags": ["blue", "red"]}
        assert type(value["color"]) is str and type(value["size"]) is int and type(value["tags"][0]) is str
    # so a frame of them can be written to Parquet
    frame = pd.DataFrame([value, fmt.parse_text('{"color": "blue", "size": 1, "tags": []}')[0]])
    frame.to_parquet(tmp_path / "painted.parquet")
    assert pd.read_parquet(tmp_path / "painted.parquet")["color"].tolist() == ["red", "blue"]

"""The local model's grammars and sampling defaults, without running the model.

(The model-running checks of the same are in ``test_local.py``.)
"""

from __future__ import annotations

import itertools
import re

import pytest

pytest.importorskip("llama_cpp")

from pdbatch.core.parsing import response_format, strict_schema  # noqa: E402
from pdbatch.local_model.grammar import (  # noqa: E402
    FLAT_JSON_GBNF, FLAT_MAX_KEYS, FLAT_MAX_STRING, UNIQUE_MAX_RULES, schema_grammar,
)
from pdbatch.local_model.llama import SAMPLING, translate_body  # noqa: E402

GENRES = ["action", "comedy", "drama", "war", "western"]
UNIQUE = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "uniqueItems": True, "minItems": 1, "maxItems": 3, "items": {"enum": GENRES}},
        "note": {"type": "string", "maxLength": 12},
    },
    "required": ["tags", "note"],
}
MSGS = [{"role": "user", "content": "hi"}]


def _rules(gbnf: str) -> dict:
    return dict(line.split(" ::= ", 1) for line in gbnf.splitlines() if " ::= " in line)


def test_unique_enum_array_never_offers_a_chosen_value():
    rules = _rules(schema_grammar(strict_schema(UNIQUE, drop=())))
    names = [n for n in rules if n.startswith("pdbatch-unique-0")]
    # one rule per set of fewer than maxItems chosen values (plus the array itself)
    assert len(names) == 1 + len(GENRES) + len(list(itertools.combinations(GENRES, 2)))
    for name in names[1:]:
        chosen = {GENRES[int(i)] for i in name[len("pdbatch-unique-0-"):].split("-")}
        offered = set(re.findall(r'\\"([a-z]+)\\"', rules[name]))
        assert offered == set(GENRES) - chosen, name
    # at least one item (minItems 1): the first choice is not optional
    assert rules["pdbatch-unique-0"].startswith('"[" space ("\\"action\\"')
    assert rules["tags"] == "pdbatch-unique-0"


def test_schema_grammar_keeps_llama_cpp_bounds_and_clean_strings():
    rules = _rules(schema_grammar(strict_schema(UNIQUE, drop=())))
    assert rules["note"].count("char") == 12  # maxLength 12: at most 12 characters
    assert "\\x00-\\x1F" in rules["char"]  # no raw control characters (a newline) inside strings
    # without uniqueItems, llama-cpp-python's repetition with maxItems stays
    plain = dict(UNIQUE, properties=dict(UNIQUE["properties"], tags={"type": "array", "maxItems": 2,
                                                                     "items": {"enum": GENRES}}))
    rules = _rules(schema_grammar(strict_schema(plain)))
    assert "pdbatch-unique" not in "".join(rules.values())
    assert rules["tags"].count("tags-item") == 2


def test_too_many_unique_combinations_are_left_to_validation():
    many = {"type": "object", "properties": {"t": {
        "type": "array", "uniqueItems": True, "maxItems": 6, "items": {"enum": [f"v{i}" for i in range(40)]}}}}
    assert "pdbatch-unique" not in schema_grammar(many)
    # and the answer is still checked against the whole schema: a repeat is an error cell
    fmt = response_format(many)
    value, err = fmt.parse_text('{"t": ["v1", "v1"]}')
    assert value is None and err.startswith("schema violation at /t") and "non-unique" in err
    assert UNIQUE_MAX_RULES >= 232  # the movie example (21 genres, up to 3) fits


def test_flat_json_grammar_is_flat_and_bounded():
    rules = _rules(FLAT_JSON_GBNF)
    assert '"{"' not in rules["value"] + rules["scalar"] and "root" not in rules["value"]  # no nested objects
    assert "[" not in rules["scalar"]  # lists hold scalars only: depth 2 at most
    assert "*" not in FLAT_JSON_GBNF and "+" not in FLAT_JSON_GBNF.replace('"+"', "")  # every repeat bounded
    assert f"{{0,{FLAT_MAX_KEYS - 1}}}" in rules["root"] and f"{{0,{FLAT_MAX_STRING}}}" in rules["string"]


def test_translate_body_grammars():
    assert translate_body({"messages": MSGS, "response_format": {"type": "json_object"}})["grammar"] == FLAT_JSON_GBNF
    body = {"messages": MSGS, "response_format": {"type": "json_schema",
                                                   "json_schema": {"name": "x", "schema": UNIQUE}}}
    assert translate_body(body)["grammar"] == schema_grammar(UNIQUE)
    own = {"messages": MSGS, "response_format": {"type": "json_object", "schema": UNIQUE}}
    assert translate_body(own)["grammar"] == schema_grammar(UNIQUE)
    for fmt in (None, {"type": "text"}):
        assert "grammar" not in translate_body({"messages": MSGS, "response_format": fmt}, schema=UNIQUE)


def test_unique_items_leave_the_request_but_not_the_grammar_or_the_validation():
    fmt = response_format(UNIQUE)
    sent = fmt.body["json_schema"]["schema"]
    assert "uniqueItems" not in sent["properties"]["tags"]  # OpenAI refuses it: 'uniqueItems' is not permitted
    body = {"messages": MSGS, "response_format": fmt.body}
    assert "pdbatch-unique" not in translate_body(body)["grammar"]
    # the local backend hands the grammar the answers' own schema
    assert "pdbatch-unique-0 ::=" in translate_body(body, schema=strict_schema(fmt.schema, drop=()))["grammar"]
    value, err = fmt.parse_text('{"tags": ["war", "war"], "note": "x"}')
    assert value is None and err.startswith("schema violation at /tags") and "non-unique" in err
    assert fmt.parse_text('{"tags": ["war", "drama"], "note": "x"}') == ({"tags": ["war", "drama"], "note": "x"}, None)


def test_sampling_defaults_apply_and_the_body_overrides_them():
    out = translate_body({"messages": MSGS})
    assert {k: out[k] for k in SAMPLING} == SAMPLING
    mine = {"temperature": 0.7, "top_p": 0.5, "repeat_penalty": 1.0, "top_k": 5, "min_p": 0.0,
            "frequency_penalty": 0.3}
    out = translate_body({"messages": MSGS, **mine})
    assert {k: out[k] for k in mine} == mine
    assert translate_body({"messages": MSGS, "temperature": 0})["temperature"] == 0

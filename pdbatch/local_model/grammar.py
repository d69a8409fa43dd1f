"""Grammars (GBNF) that keep a small model's JSON answers valid and finite.

llama.cpp constrains decoding with a grammar. llama-cpp-python builds one
from a JSON Schema, enforcing ``enum``, ``minItems``/``maxItems`` and
``minLength``/``maxLength``, but it ignores ``uniqueItems`` and lets strings
hold raw control characters (a newline inside a string, which no JSON
parser accepts). In JSON mode (no schema) its grammar is "any JSON value",
and a 135M model then nests objects until the token limit. This module
builds the grammars the local model uses instead:

* :func:`schema_grammar`: llama-cpp-python's grammar for a schema, with
  strings free of control characters, and arrays of ``enum`` values with
  ``uniqueItems: true`` (and a small ``maxItems``) that cannot repeat a value;
* :data:`FLAT_JSON_GBNF`: JSON mode for small models, an object of at most
  :data:`FLAT_MAX_KEYS` keys whose values are strings, numbers, booleans,
  null, or short lists of those, every string bounded.

The answers are still validated against the whole schema afterwards
(:mod:`pdbatch.core.parsing`): what a grammar cannot enforce becomes an
error cell, never a silent pass.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
from typing import Any, Dict, List, Tuple

__all__ = ["FLAT_JSON_GBNF", "FLAT_MAX_KEYS", "FLAT_MAX_STRING", "UNIQUE_MAX_RULES", "schema_grammar"]

#: Most keys of a JSON-mode answer.
FLAT_MAX_KEYS = 12
#: Longest string value of a JSON-mode answer, in characters.
FLAT_MAX_STRING = 600
#: Most items of a list value in a JSON-mode answer.
FLAT_MAX_ITEMS = 10

_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'

#: JSON mode on the local model: a flat object, every part bounded.
FLAT_JSON_GBNF = rf"""root ::= "{{" space pair ("," space pair){{0,{FLAT_MAX_KEYS - 1}}} "}}" space
pair ::= key ":" space value
key ::= "\"" [a-zA-Z_] [a-zA-Z0-9_ -]{{0,39}} "\"" space
value ::= scalar | "[" space (scalar ("," space scalar){{0,{FLAT_MAX_ITEMS - 1}}})? "]" space
scalar ::= string | number | ("true" | "false" | "null") space
string ::= "\"" char{{0,{FLAT_MAX_STRING}}} "\"" space
char ::= {_CHAR}
number ::= "-"? ([0-9] | [1-9] [0-9]{{0,15}}) ("." [0-9]{{1,15}})? space
space ::= " "?
"""

#: Most grammar rules spent on one array of unique ``enum`` values; a larger one is only validated.
UNIQUE_MAX_RULES = 2000
_PLACEHOLDER = "pdbatch-unique-{}"


def _literal(value: Any) -> str:
    """A GBNF literal matching ``value`` written as JSON."""
    text = json.dumps(value, ensure_ascii=False)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'


def _unique_rules(name: str, values: List[Any], lo: int, hi: int) -> List[str]:
    """GBNF rules for a JSON array of ``lo``..``hi`` distinct items of ``values``, any order.

    One rule per set of items already written (fewer than ``hi``): it offers
    only the values not in the set, so no value can come twice.
    """
    lits = [_literal(v) for v in values]

    def after(chosen: Tuple[int, ...]) -> str:
        if len(chosen) >= hi:
            return ""
        return f"{name}-" + "-".join(map(str, chosen))

    def body(chosen: Tuple[int, ...]) -> str:
        alts = []
        for i in range(len(values)):
            if i in chosen:
                continue
            rest = after(tuple(sorted(chosen + (i,))))
            alts.append(f"{lits[i]} {rest}".strip())
        return "(" + " | ".join(alts) + ")"

    rules = [f'{name} ::= "[" space ' + (body(()) if lo >= 1 else f"({body(())})?") + ' "]" space']
    for size in range(1, hi):
        for chosen in itertools.combinations(range(len(values)), size):
            more = f'"," space {body(chosen)}'
            rules.append(f"{after(chosen)} ::= " + (more if size < lo else f"({more})?"))
    return rules


def _unique_enum(node: Any) -> Tuple[List[Any], int, int]:
    """``(values, minItems, maxItems)`` of an array node the grammar can keep unique, else ``None``."""
    if not isinstance(node, dict) or node.get("uniqueItems") is not True or node.get("type") not in (None, "array"):
        return None
    items = node.get("items")
    if not isinstance(items, dict) or not isinstance(items.get("enum"), list) or not items["enum"]:
        return None
    values = list(dict.fromkeys(json.dumps(v, sort_keys=True) for v in items["enum"]))
    values = [json.loads(v) for v in values]
    hi = min(int(node.get("maxItems", len(values))), len(values))
    lo = int(node.get("minItems", 0))
    if lo > hi or sum(math.comb(len(values), s) for s in range(hi)) > UNIQUE_MAX_RULES:
        return None
    return values, lo, hi


def _replace_unique(node: Any, found: List[Tuple[List[Any], int, int]]) -> Any:
    if isinstance(node, list):
        return [_replace_unique(n, found) for n in node]
    if not isinstance(node, dict):
        return node
    spec = _unique_enum(node)
    if spec is not None:
        found.append(spec)
        return {"const": _PLACEHOLDER.format(len(found) - 1)}
    return {k: _replace_unique(v, found) for k, v in node.items()}


@functools.lru_cache(maxsize=64)
def _schema_grammar(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    found: List[Tuple[List[Any], int, int]] = []
    schema = _replace_unique(json.loads(schema_json), found)
    lines = json_schema_to_gbnf(json.dumps(schema)).splitlines()
    out = []
    for line in lines:
        if line.startswith("char ::= "):
            line = "char ::= " + _CHAR  # no raw control characters inside strings
        for k in range(len(found)):
            line = line.replace(_literal(_PLACEHOLDER.format(k)), _PLACEHOLDER.format(k))
        out.append(line)
    for k, (values, lo, hi) in enumerate(found):
        out.extend(_unique_rules(_PLACEHOLDER.format(k), values, lo, hi))
    return "\n".join(out) + "\n"


def schema_grammar(schema: Dict[str, Any]) -> str:
    """The GBNF grammar the local model decodes a schema's answers with.

    llama-cpp-python's own conversion (``enum``, ``const``, ``minItems``,
    ``maxItems``, ``minLength``, ``maxLength``, ``pattern``, ``required``,
    ``additionalProperties``...), with two changes: string characters exclude
    control characters (as JSON requires), and an array with
    ``uniqueItems: true`` whose items are an ``enum`` gets rules that offer
    only the values not yet written (when that takes at most
    :data:`UNIQUE_MAX_RULES` rules: 21 values and ``maxItems: 3`` take 232).
    Other ``uniqueItems`` arrays are left to the validation of the answer.
    Grammars are cached by schema.

    Parameters
    ----------
    schema : dict
        A JSON Schema (the request's, i.e. already made strict).

    Returns
    -------
    str
        GBNF text with a ``root`` rule.

    Examples
    --------
    >>> g = schema_grammar({"type": "object", "required": ["tags"], "properties": {"tags": {
    ...     "type": "array", "uniqueItems": True, "maxItems": 2, "items": {"enum": ["a", "b"]}}}})
    >>> [line for line in g.splitlines() if line.startswith("pdbatch-unique-0")]  # doctest: +NORMALIZE_WHITESPACE
    ['pdbatch-unique-0 ::= "[" space (("\\\\"a\\\\"" pdbatch-unique-0-0 | "\\\\"b\\\\"" pdbatch-unique-0-1))? "]" space',
     'pdbatch-unique-0-0 ::= ("," space ("\\\\"b\\\\""))?',
     'pdbatch-unique-0-1 ::= ("," space ("\\\\"a\\\\""))?']
    """
    return _schema_grammar(json.dumps(copy.deepcopy(schema), sort_keys=False))

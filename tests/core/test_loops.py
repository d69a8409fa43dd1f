"""Repetition loops in cut-off answers, and the error cell that names them."""

from __future__ import annotations

import pytest

from pdbatch.core.answers import TRUNCATED, answer_reason, truncated_reason
from pdbatch.core.loops import LOOP_MAX_PERIOD, LOOP_MIN_CHARS, repetition_loop
from pdbatch.core.parsing import response_format
from pdbatch.core.records import Result

# What SmolLM2-135M wrote for the main job before the repeat penalty (raw text, cut at the limit).
SEEN = [
    ('{"categories": ["drama"], "summary": "A young man dreams of a life of ambition, a life of ambition, '
     'a life of ambition, a life of ambition, a life of', " a life of ambition,"),
    ('{ "categories": ["The Kid", "The Kid (1921)", "The Kid (1921)", "The Kid (1921)", "The Kid (1921)", '
     '"The Kid (1921)", "The Ki', ' "The Kid (1921)",'),
    ('{"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": {"m": {"n": {"o": {',
     None),  # nesting with new keys: not a repetition of one unit
    ('{"summary": "' + "\n" * 30, "\n"),
    ('{"summary": "' + "very " * 8, "very "),
]


@pytest.mark.parametrize("text, unit", SEEN)
def test_repetition_loop_finds_the_unit(text, unit):
    got = repetition_loop(text)
    if unit is None:
        assert got is None
    else:
        # the unit as it first appears in the loop: the expected one, or a rotation of it
        assert got is not None and len(got) == len(unit) and got in unit + unit


@pytest.mark.parametrize("text", [
    "",
    "ha ha ha",  # too short to call a loop
    '{"summary": "A penniless tramp discovers an abandoned baby and raises him as his own, until the',
    '{"categories": ["drama", "crime"], "summary": "Two hit men, a boxer and a gangster\'s wife cross paths',
    "Hmm...",
    "Nine, ten, eleven, twelve, thirteen, fourteen, fifteen, sixteen, seventeen",
    None,
])
def test_repetition_loop_leaves_ordinary_text(text):
    assert repetition_loop(text) is None


def test_repetition_loop_bounds():
    unit = "x" * (LOOP_MAX_PERIOD + 1) + "."
    assert repetition_loop("start " + unit * 4) is None  # unit longer than the longest period looked for
    assert repetition_loop("ab" * (LOOP_MIN_CHARS // 2 - 1)) is None  # too few characters
    assert repetition_loop("ab" * (LOOP_MIN_CHARS // 2)) in ("ab", "ba")
    # the shortest period wins over its multiples
    assert repetition_loop("begin:" + "go on, " * 10) == "go on, "


def test_truncated_reason_words_loops_and_plain_cuts():
    assert truncated_reason('{"summary": "A tale') == TRUNCATED
    assert truncated_reason(None) == TRUNCATED
    loop = truncated_reason(SEEN[0][0])
    assert loop.startswith("truncated: the model repeated itself")
    assert "a life of ambition" in loop and "repeat_penalty" in loop and "maxLength" in loop
    assert "raise max_completion_tokens" not in loop
    long_unit = truncated_reason("intro " + ("abcdefghij" * 6 + " ") * 5)
    assert "..." in long_unit and len(long_unit) < 400


def test_answer_reason_and_parse_use_the_loop_wording():
    assert answer_reason(200, SEEN[0][0], "length", None, True, None, None).startswith(
        "truncated: the model repeated itself")
    assert answer_reason(200, "partial", "length", None, True, None, None) == TRUNCATED
    fmt = response_format("json")
    result = Result("1", {"choices": [{"message": {"content": SEEN[1][0]}, "finish_reason": "length"}]})
    value, err = fmt.parse(result)
    assert value is None and err.startswith("truncated: the model repeated itself")

"""Tests for pdbatch/template.py: parse fields, check columns, render rows, display strings, images."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest

from pdbatch.errors import MissingColumnError, TemplateError
from pdbatch.core.template import SERIES_FIELD, Template, display_strings, image_part

# ---------------------------------------------------------------- parse


@pytest.mark.parametrize(
    "text, fields, compiled, raw, literal",
    [
        ("Title: {title} ({year}) {{json}}", ("title", "year"), "Title: {0} ({1}) {{json}}", set(), "Title:  () {json}"),
        ("{a}{a}{b:.2f}{c!r}", ("a", "b", "c"), "{0}{0}{1:.2f}{2!r}", {"b", "c"}, ""),
        ("no fields at all", (), "no fields at all", set(), "no fields at all"),
        ("{{}} {x}}}", ("x",), "{{}} {0}}}", set(), "{} }"),
        ("{Series Title}", ("Series Title",), "{0}", set(), ""),
        ("{b}{a}", ("b", "a"), "{0}{1}", set(), ""),
    ],
)
def test_parse(text, fields, compiled, raw, literal):
    t = Template.parse(text)
    assert t.text == text
    assert t.fields == fields
    assert t.compiled == compiled
    assert t.raw_fields == frozenset(raw)
    assert t.literal_text == literal


@pytest.mark.parametrize("text", ["{}", "{0}", "{value}", "{} and {0}"])
def test_series_positional_fields_mean_the_value(text):
    t = Template.parse(text, series=True)
    assert t.fields == (SERIES_FIELD,)
    assert t.render({SERIES_FIELD: ["v"]}, 1) == [text.replace("{}", "v").replace("{0}", "v").replace("{value}", "v")]


def test_series_conversion_is_raw():
    t = Template.parse("{!r}", series=True)
    assert t.raw_fields == frozenset({SERIES_FIELD})
    assert t.render({SERIES_FIELD: ["x"]}, 1) == ["'x'"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("{}", r"positional field '\{\}'.*name the column"),
        ("{0}", r"positional field '\{0\}'"),
        ("{a.b}", r"attribute or item access.*add a column"),
        ("{a[0]}", r"attribute or item access"),
        ("{a:{b}}", r"nested field in its format spec"),
        ("oops }", r"not a valid format string.*'\{\{' and '\}\}'"),
        ("oops {", r"not a valid format string"),
    ],
)
def test_parse_rejects(text, match):
    with pytest.raises(TemplateError, match=match):
        Template.parse(text)


def test_parse_rejects_non_string_naming_argument():
    with pytest.raises(TemplateError, match="^images must be a str, got int"):
        Template.parse(5, argument="images")


def test_parse_error_names_custom_argument():
    with pytest.raises(TemplateError, match=r"^system has a positional field"):
        Template.parse("{}", argument="system")


def test_unknown_conversion_rejected_at_parse():
    # regression: '{a!x}' used to parse, then fail in render() with a bare ValueError
    with pytest.raises(TemplateError, match=r"unknown conversion; use !r, !s or !a"):
        Template.parse("{a!x}")


# -------------------------------------------------------------- columns


def test_check_columns_passes_with_non_string_columns_present():
    t = Template.parse("{a} {b}")
    assert t.check_columns(["b", "a", 3]) is None


def test_check_columns_names_missing_fields_only():
    t = Template.parse("{a} {zz} {b} {yy}")
    with pytest.raises(MissingColumnError) as info:
        t.check_columns(["a", "b", 7], argument="system")
    assert info.value.missing == ["zz", "yy"]
    assert info.value.available == ["a", "b", "7"]
    assert str(info.value).startswith("system refers to column(s) 'zz', 'yy'")


# --------------------------------------------------------------- render


def test_render_formats_each_row():
    t = Template.parse("{a} / {b}")
    assert t.render({"a": ["1", "2"], "b": ["x", "y"]}, 2) == ["1 / x", "2 / y"]


def test_render_single_field_and_repeats():
    t = Template.parse("<{a}|{a}>")
    assert t.render({"a": ["p", "q"]}, 2) == ["<p|p>", "<q|q>"]


def test_render_skip_leaves_none_at_skipped_positions():
    t = Template.parse("{a} {b:>4} {{x}}")
    out = t.render({"a": ["1", "2", "3"], "b": [7, 8, 9]}, 3, skip={1: "missing value in column 'a'"})
    assert out == ["1    7 {x}", None, "3    9 {x}"]


def test_render_format_spec_applies_to_raw_values():
    t = Template.parse("{price:.2f}")
    assert t.render({"price": [1.5, 2]}, 2) == ["1.50", "2.00"]


def test_render_without_fields_repeats_constant_text():
    t = Template.parse("same {{}}")
    assert t.render({}, 3) == ["same {}"] * 3
    assert t.render({}, 3, skip={0: "r"}) == [None, "same {}", "same {}"]
    assert t.render({}, 0) == []


# ------------------------------------------------------- display_strings


@pytest.mark.parametrize(
    "series, expected",
    [
        (pd.Series([1994, -3]), ["1994", "-3"]),
        (pd.Series([1994, None], dtype="Int64"), ["1994", None]),
        (pd.Series([1994.0, float("nan"), 2.5]), ["1994", None, "2.5"]),
        (pd.Series([1.5, None], dtype="Float64"), ["1.5", None]),
        (pd.Series([1e16, float("inf")]), ["1e+16", "inf"]),
        (pd.Series(["a", None, np.nan], dtype=object), ["a", None, None]),
        (pd.Series([["a", "b"], {"k": 1}, ("t", 2)]), ['["a","b"]', '{"k":1}', '["t",2]']),
        (pd.Series([np.array([1, 2])]), ["[1,2]"]),
        (pd.Series([True, None], dtype="boolean"), ["True", None]),
        (pd.Series(pd.to_datetime(["2024-01-01", None])), ["2024-01-01", None]),
        (pd.Series(pd.to_datetime(["2024-01-01 10:00", None])), ["2024-01-01 10:00:00", None]),
        (pd.Series(["x", "y"], dtype="category"), ["x", "y"]),
        (pd.Series([3.0, "s", 7], dtype=object), ["3", "s", "7"]),
        (pd.Series([], dtype=float), []),
    ],
)
def test_display_strings(series, expected):
    assert display_strings(series) == expected


def test_display_strings_dict_with_int_keys():
    # regression: orjson raised TypeError('Dict key must be str') and rendering crashed
    assert display_strings(pd.Series([{1: "a"}])) == ['{"1":"a"}']


def test_display_strings_float32_prints_as_shown():
    # regression: float32 0.1 printed as '0.10000000149011612'
    assert display_strings(pd.Series([0.1, None, 2.0], dtype="float32")) == ["0.1", None, "2"]
    assert display_strings(pd.Series([0.1, None], dtype="Float32")) == ["0.1", None]


# ------------------------------------------------------------ image_part


@pytest.mark.parametrize("url", ["https://example.com/a.png", "http://x/y.jpg", "data:image/png;base64,AAAA"])
def test_image_part_urls_pass_through(url):
    part, reason = image_part("  " + url + "\n", detail="low")
    assert reason is None
    assert part == {"type": "image_url", "image_url": {"url": url, "detail": "low"}}


def test_image_part_local_file_becomes_data_url(tmp_path):
    p = tmp_path / "pic.png"
    p.write_bytes(b"\x89PNG fake bytes")
    part, reason = image_part(str(p))
    assert reason is None
    assert part["type"] == "image_url"
    assert "detail" not in part["image_url"]
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == b"\x89PNG fake bytes"


def test_image_part_file_scheme_and_home(tmp_path, monkeypatch):
    p = tmp_path / "pic.jpg"
    p.write_bytes(b"jpeg")
    part, _ = image_part("file://" + str(p))
    assert part["image_url"]["url"] == "data:image/jpeg;base64," + base64.b64encode(b"jpeg").decode()
    monkeypatch.setenv("HOME", str(tmp_path))
    part, reason = image_part("~/pic.jpg")
    assert reason is None and part["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_image_part_missing_file_is_a_reason_not_an_exception(tmp_path):
    ref = str(tmp_path / "nope.png")
    assert image_part(ref) == (None, f"image file not found: {ref!r}")


def test_image_part_non_image_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hi")
    part, reason = image_part(str(p))
    assert part is None
    assert reason.startswith("not an image file") and "notes.txt" in reason


# ---------------------------------------------- values a template cannot render


def test_int_spec_on_a_float_column_with_gaps_names_column_row_and_fix():
    t = Template.parse("{title} ({year:d})")
    col = pd.Series([np.nan, 1994.0, 2001.0], index=["m1", "m2", "m3"], name="year")
    cols = {"title": ["A", "B", "C"], "year": [None, 1994.0, 2001.0]}
    assert display_strings(col) == [None, "1994", "2001"]
    with pytest.raises(TemplateError) as info:
        t.render(cols, 3, skip={0: "missing value in column 'year'"}, ids=["m1", "m2", "m3"])
    message = str(info.value)
    assert "template field '{year:d}'" in message and "column 'year'" in message
    assert "index label 'm2'" in message and "1994.0 (float)" in message
    assert "astype('Int64')" in message


def test_float_spec_on_strings_names_column_row_and_fix():
    t = Template.parse("{name}: {q:.2f}", argument="system")
    cols = {"name": ["a", "b", "c"], "q": [1.5, 2.0, "n/a"]}
    with pytest.raises(TemplateError) as info:
        t.render(cols, 3, ids=["x", "y", "z"])
    message = str(info.value)
    assert "system field '{q:.2f}'" in message and "column 'q'" in message
    assert "index label 'z'" in message and "'n/a' (str)" in message
    assert "pd.to_numeric(df['q'])" in message
    assert not isinstance(info.value.__cause__, ValueError)


def test_format_error_without_ids_names_the_row_position():
    t = Template.parse("{a}{b:%Y}")
    with pytest.raises(TemplateError, match=r"column 'b' at row 1: .*drop the spec"):
        t.render({"a": ["1", "2"], "b": [pd.Timestamp("2024-01-01"), 5]}, 2)


def test_failing_value_in_a_skipped_row_is_not_an_error():
    t = Template.parse("{q:.1f}")
    assert t.render({"q": [1.0, "bad", 2.0]}, 3, skip={1: "r"}, ids=["a", "b", "c"]) == ["1.0", None, "2.0"]


@pytest.mark.parametrize("series, label", [
    (pd.Series(["ok", "bad \ud800"], index=["r1", "r2"], name="text", dtype=object), "'r2'"),
    (pd.Series(["ok", None, "bad \udcff"], index=[10, 11, 12], name="text", dtype="string[python]"), "12"),
    (pd.Series(["ok", 5, "bad \udcff"], index=[10, 11, 12], name="text", dtype=object), "12"),
    (pd.Series([["ok"], ["bad \udcff"]], index=["a", "b"], name="text"), "'b'"),
    (pd.Series([f"v{i}" for i in range(70_001)] + ["\ud800"], name="text", dtype=object), "70001"),
])
def test_lone_surrogate_in_a_value_names_column_row_and_fix(series, label):
    with pytest.raises(TemplateError) as info:
        display_strings(series)
    message = str(info.value)
    assert "column 'text' holds a lone surrogate" in message
    assert f"index label {label}," in message
    assert ".str.encode('utf-8', 'replace')" in message


def test_non_ascii_values_are_fine():
    assert display_strings(pd.Series(["é", "日本 \U0001f600", None])) == ["é", "日本 \U0001f600", None]


def test_lone_surrogate_in_the_template_text_is_refused():
    with pytest.raises(TemplateError, match="system holds a lone surrogate"):
        Template.parse("Be brief \udc80 {x}", argument="system")

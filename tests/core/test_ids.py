"""Tests for pdbatch/ids.py: custom_id from the index, uniqueness after stringification."""

from __future__ import annotations

import pandas as pd
import pytest

from pdbatch.errors import DuplicateIdError, EmptyIdError, InputError, TemplateError
from pdbatch.core.ids import SEP, check_unique, custom_ids, row_positions, unique_ids


@pytest.mark.parametrize(
    "index, expected",
    [
        (pd.RangeIndex(3), ["0", "1", "2"]),
        (pd.RangeIndex(10, 0, -3), ["10", "7", "4", "1"]),
        (pd.Index([3, -1, 2**40]), ["3", "-1", "1099511627776"]),
        (pd.Index(["b", "a", "b c"]), ["b", "a", "b c"]),
        (pd.Index([1, "x", 2.5], dtype=object), ["1", "x", "2.5"]),
        (pd.Index([2**70, 1]), [str(2**70), "1"]),
        (pd.Index([1.0, 2.5]), ["1.0", "2.5"]),
        (pd.Index([True, False]), ["True", "False"]),
        (pd.CategoricalIndex(["x", "y"]), ["x", "y"]),
        (pd.DatetimeIndex(["2024-01-01", "2024-01-02"]), ["2024-01-01", "2024-01-02"]),
        (pd.DatetimeIndex(["2024-01-01", "2024-01-02 10:30"]), ["2024-01-01 00:00:00", "2024-01-02 10:30:00"]),
        (pd.MultiIndex.from_tuples([("a", 1), ("b", 2)]), ["a|1", "b|2"]),
        (pd.MultiIndex.from_tuples([("a", 1, "z")]), ["a|1|z"]),
        (pd.Index([], dtype=object), []),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, pd.Index) else None,
)
def test_custom_ids(index, expected):
    ids = custom_ids(index)
    assert ids == expected
    assert all(type(i) is str for i in ids)


def test_separator_is_pipe():
    assert SEP == "|"
    mi = pd.MultiIndex.from_arrays([["a"], [2]])
    assert custom_ids(mi) == ["a" + SEP + "2"]


def test_custom_ids_keep_row_order_of_unsorted_index():
    idx = pd.Index([30, 10, 20])
    assert custom_ids(idx) == ["30", "10", "20"]


def test_check_unique_accepts_unique():
    assert check_unique(["a", "b", "1"]) is None
    assert check_unique([]) is None


def test_int_and_string_labels_collide():
    ids = custom_ids(pd.Index([1, "1", 2], dtype=object))
    with pytest.raises(DuplicateIdError) as info:
        check_unique(ids)
    assert info.value.duplicates == ["1"]
    assert "reset_index()" in str(info.value)


def test_multiindex_separator_collision_is_caught():
    mi = pd.MultiIndex.from_tuples([("a|b", "c"), ("a", "b|c")])
    ids = custom_ids(mi)
    assert ids == ["a|b|c", "a|b|c"]
    with pytest.raises(DuplicateIdError, match="'a|b|c'"):
        check_unique(ids)


def test_each_duplicate_reported_once_with_total():
    ids = [str(i) for i in range(12)] * 2 + ["0"]
    with pytest.raises(DuplicateIdError) as info:
        check_unique(ids)
    assert info.value.duplicates == [str(i) for i in range(10)]
    assert "and 2 more" in str(info.value)


def test_row_positions_maps_id_to_row():
    assert row_positions(["b", "a", "c"], ["b", "a", "c", "x"]).tolist() == [0, 1, 2, -1]


@pytest.mark.parametrize("index", [pd.Index(["a", None]), pd.Index([1, None], dtype="Int64"),
                                   pd.Index([1.5, float("nan")]), pd.DatetimeIndex(["2024-01-01", None])])
def test_missing_label_still_gives_string_id(index):
    # regression: a missing label gave a float NaN custom_id (written as custom_id null in the JSONL)
    ids = custom_ids(index)
    assert len(ids) == 2 and all(type(i) is str for i in ids)
    assert ids[0] != ids[1]


def test_multiindex_with_missing_label():
    # regression: raised TypeError (sequence item 1: expected str instance, float found)
    ids = custom_ids(pd.MultiIndex.from_tuples([("a", 1), ("b", None)]))
    assert len(ids) == 2 and all(type(i) is str for i in ids)


def test_unique_ids_checks_every_index_but_a_range():
    assert unique_ids(pd.RangeIndex(2, 8, 3)) == ["2", "5"]
    with pytest.raises(DuplicateIdError, match="reset_index"):
        unique_ids(pd.Index([1, "1"], dtype=object))
    with pytest.raises(DuplicateIdError):
        unique_ids(pd.Index([3, 3]))


@pytest.mark.parametrize("index, label", [
    (pd.Index(["a", "", "c"]), "''"),
    (pd.Index(["a", "", "c"], dtype="string"), "''"),
    (pd.CategoricalIndex(["a", "", "c"]), "''"),
    (pd.MultiIndex.from_arrays([["a", "", "c"]]), "('',)"),
])
def test_empty_custom_id_is_refused_with_the_fix(index, label):
    with pytest.raises(EmptyIdError) as info:
        custom_ids(index)
    assert isinstance(info.value, InputError)
    message = str(info.value)
    assert f"index label {label} at row 1" in message
    assert "empty custom_id" in message and "df.reset_index()" in message
    with pytest.raises(EmptyIdError):
        unique_ids(index)


def test_labels_that_only_look_empty_are_kept():
    assert custom_ids(pd.Index([" ", "a"])) == [" ", "a"]
    assert custom_ids(pd.MultiIndex.from_tuples([("", ""), ("a", "")])) == ["|", "a|"]
    assert custom_ids(pd.Index([None, "a"], dtype=object)) == ["None", "a"]


@pytest.mark.parametrize("index, label, row", [
    (pd.Index(["ok", "b\ud800", "c\udcff"], dtype=object), "'b\\ud800'", 1),
    (pd.MultiIndex.from_arrays([["a", "b"], pd.Index([1, "\udc80"], dtype=object)]), "('b', '\\udc80')", 1),
    (pd.Index([f"r{i}" for i in range(70_000)] + ["\ud83d"], dtype=object), "'\\ud83d'", 70_000),
])
def test_lone_surrogate_in_a_label_is_refused_naming_the_row(index, label, row):
    with pytest.raises(TemplateError) as info:
        custom_ids(index)
    message = str(info.value)
    assert f"index label {label} at row {row}" in message
    assert "lone surrogate" in message and "df.reset_index()" in message


def test_non_ascii_labels_are_fine():
    assert custom_ids(pd.Index(["é", "日本", "\U0001f600"])) == ["é", "日本", "\U0001f600"]


def test_the_ids_of_a_range_index_are_a_count_that_equals_the_list_and_finds_rows_by_number():
    import pyarrow as pa

    from pdbatch.core.ids import RangeIds, ids_arrow, row_positions

    for index in (pd.RangeIndex(5), pd.RangeIndex(10, 20, 3), pd.RangeIndex(8, -4, -4), pd.RangeIndex(0)):
        ids = custom_ids(index)
        want = [str(v) for v in index]
        assert isinstance(ids, RangeIds) and ids == want and list(ids) == want and len(ids) == len(want)
        assert ids[1:3] == want[1:3] and ids_arrow(ids).to_pylist() == want
        if want:
            assert ids[0] == want[0] and ids[-1] == want[-1]
    ids = custom_ids(pd.RangeIndex(10, 20, 3))  # 10, 13, 16, 19
    probe = ["19", "10", "11", "22", "7", "013", "-0", "1e1", "", None, "13"]
    assert row_positions(ids, pa.array(probe)).tolist() == [3, 0, -1, -1, -1, -1, -1, -1, -1, -1, 1]
    assert row_positions(["a", "b"], ["b", "c"]).tolist() == [1, -1]  # any other ids: by value
    assert "16" in ids and "17" not in ids and "016" not in ids
    with pytest.raises(IndexError):
        ids[4]

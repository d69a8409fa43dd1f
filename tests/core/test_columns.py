"""Compact answer columns give the pandas columns the object path gives, with shared list items."""

import gc

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pdbatch.core.columns import compact, concat, merge, objects, paused_steps, spread, take, to_series
from pdbatch.core.join import _series

CASES = {
    "text": ["a", None, "c"],
    "text full": ["a", "b"],
    "ints": [1, 2, 3],
    "ints with gaps": [1, None, 3],
    "bools": [True, False],
    "bools with gaps": [True, None],
    "floats": [1.5, None, 2.0],
    "ints and floats": [1, 2.5, None],
    "empty": [None, None],
    "text lists": [["a", "b"], None, [], ["b"]],
    "int lists": [[1, 2], [3]],
    "float lists": [[1, 2.5], [3]],
    "dicts": [{"a": 1}, None],
    "mixed": [1, "a", None],
    "big int": [2**70, 1],
}


def obj(values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_a_compact_column_gives_the_same_pandas_column_as_the_object_path(case):
    values = obj(CASES[case])
    index = pd.Index(list(range(len(values))))
    want = _series(values.copy(), index, "k")
    col = compact(values)
    got = to_series(col, index, "k") if isinstance(col, pa.ChunkedArray) else _series(col, index, "k")
    pd.testing.assert_series_equal(got, want)
    assert [type(v) for v in got.tolist()] == [type(v) for v in want.tolist()]
    kept = isinstance(col, pa.ChunkedArray)
    assert kept == (case not in ("float lists", "dicts", "mixed", "big int"))


def test_list_items_of_text_are_shared_objects():
    col = compact(obj([["drama", "war"], ["drama"], ["war", "drama"]] * 1000))
    s = to_series(col, pd.RangeIndex(3000), "c")
    assert s[0] == ["drama", "war"] and s[2999] == ["war", "drama"]
    assert len({id(x) for cell in s for x in cell}) == 2


def test_a_text_column_becomes_a_pandas_column_without_a_copy():
    """Text is kept as pandas keeps it (64-bit offsets): the pandas column is made of the same buffers."""
    col = concat([compact(obj([f"summary {i}" for i in range(k, k + 100)])) for k in (0, 100)])
    s = to_series(col, pd.RangeIndex(200), "summary")
    assert s.dtype == "str" and s.tolist() == [f"summary {i}" for i in range(200)]
    held = {b.address for chunk in col.chunks for b in chunk.buffers() if b is not None}
    given = pa.array(s.array)  # pandas' own Arrow data (its __arrow_array__)
    assert {b.address for chunk in given.chunks for b in chunk.buffers() if b is not None} <= held


@pytest.mark.parametrize("values", [[["a", "b"], None, ["c"]], ["x", None, "y"]], ids=["lists", "text"])
def test_a_column_given_as_its_chunks_is_let_go_as_it_is_made(values):
    """Chunks handed over as a list are used up (a chunk of lists freed once its rows are made): same column."""
    col = concat([compact(obj(values)), compact(obj(values[::-1]))])
    want = to_series(col, pd.RangeIndex(6), "c")
    chunks = col.chunks
    got = to_series(chunks, pd.RangeIndex(6), "c")
    pd.testing.assert_series_equal(got, want)
    assert chunks == [] if isinstance(values[0], list) else len(chunks) == 2


def test_concat_merge_and_spread_keep_arrow_only_when_the_types_agree():
    a, b, c = compact(obj(["x", "y"])), compact(obj([None, None])), compact(obj([1, 2]))
    assert isinstance(concat([a, b]), pa.ChunkedArray) and concat([a, b]).to_pylist() == ["x", "y", None, None]
    mixed = concat([a, c])
    assert isinstance(mixed, np.ndarray) and mixed.tolist() == ["x", "y", 1, 2]
    m = merge(4, np.array([True, False, True, False]), a, compact(obj(["p", "q"])))
    assert m.to_pylist() == ["x", "p", "y", "q"]
    s = spread(m, np.array([3, 2, 1, 0]), 5, np.array([1]))
    assert s.to_pylist() == ["q", None, "p", "x", None]
    assert objects(s).tolist() == ["q", None, "p", "x", None]


@pytest.mark.parametrize("values", [["a", "b", "c"], [{"a": 1}, None, {"b": 2}]], ids=["arrow", "objects"])
def test_take_of_every_row_in_order_is_the_column_itself_and_anything_else_a_copy(values):
    col = compact(obj(values))
    assert take(col, np.arange(3)) is col  # a million rows' join takes no copy
    for rows in ([2, 0, 1], [0, -1, 2], [0, 2, 2], [0, 1], [0, 0, 1, 2]):
        got = take(col, np.array(rows))
        assert got is not col
        assert objects(got).tolist() == [values[r] if r >= 0 else None for r in rows]


def test_take_of_long_runs_is_slices_of_the_column_and_short_runs_a_gather():
    from pdbatch.core.columns import RUN_ROWS

    n = 3 * RUN_ROWS
    col = compact(obj([f"s{i}" for i in range(n)]))
    data = col.chunk(0).buffers()[2].address
    # The shards of a job stored out of order, with a run of rows that have no value.
    rows = np.r_[np.arange(2 * RUN_ROWS, n), np.full(RUN_ROWS, -1), np.arange(0, RUN_ROWS)]
    got = take(col, rows)
    assert got.to_pylist() == [f"s{r}" if r >= 0 else None for r in rows]
    assert {c.buffers()[2].address for c in got.chunks if c.null_count < len(c)} == {data}  # no copy of the texts
    with pytest.raises(pa.ArrowIndexError):  # a run past the end is an error, not a short slice
        take(col, np.arange(RUN_ROWS, n + RUN_ROWS))
    shuffled = np.random.default_rng(3).permutation(n)
    got = take(col, shuffled)
    assert got.to_pylist() == [f"s{r}" for r in shuffled] and got.num_chunks == 1  # gathered
    lists = compact(obj([[f"t{i % 3}", "u"] for i in range(n)]))
    series = to_series(take(lists, rows), pd.RangeIndex(n), "tags")  # a list column of several chunks
    assert series.tolist() == [[f"t{r % 3}", "u"] if r >= 0 else None for r in rows]


def test_paused_steps_pause_the_collector_only_while_an_item_is_made():
    seen = []

    def items():
        for k in range(3):
            seen.append(gc.isenabled())
            yield k

    assert gc.isenabled()
    held = [(k, gc.isenabled()) for k in paused_steps(items())]
    assert held == [(0, True), (1, True), (2, True)] and seen == [False, False, False] and gc.isenabled()

    def broken():
        yield 1
        raise ValueError("bad row")

    steps = paused_steps(broken())
    assert next(steps) == 1
    with pytest.raises(ValueError, match="bad row"):
        next(steps)
    assert gc.isenabled()  # restored after an error while making an item
    gc.disable()
    try:
        assert list(paused_steps(items())) == [0, 1, 2] and not gc.isenabled()  # a caller's own setting is kept
    finally:
        gc.enable()

"""Rendering chunk by chunk: the same lines and skipped rows whatever the chunk size; checks name the right row."""

import pandas as pd
import pyarrow as pa
import pytest

from pdbatch.core.ids import unique_ids
from pdbatch.core.spec import MapSpec
from pdbatch.errors import TemplateError
from pdbatch.job.fingerprint import fingerprint


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "title": ["a", "b", None, "d", "e", "f", "g"],
        "year": pd.array([1990, 1991, 1992, None, 1994, 1995, 1996], dtype="Int64"),
        "score": [0.5, 1.0, 2.5, 3.0, float("nan"), 4.0, 5.5],
        "tags": [["x"], ["y", "z"], [], ["w"], ["v"], ["u"], ["t"]],
    }, index=[f"r{i}" for i in range(7)])


@pytest.mark.parametrize("system", [None, "Judge {title} fairly.", "Be brief."])
def test_the_lines_and_skipped_rows_do_not_depend_on_the_chunk_size(system):
    df = frame()
    spec = MapSpec.build("{title} ({year}) {score:.1f} {tags}", columns=list(df.columns), model="m", system=system)
    ids = unique_ids(df.index)
    whole = spec.render(df, ids)
    want = list(spec.encode(whole))
    assert whole.skipped == {2: "missing value in column 'title'", 3: "missing value in column 'year'",
                             4: "missing value in column 'score'"}
    assert [cid for _, cid, _, _ in want] == ["r0", "r1", "r5", "r6"]
    for size in (1, 2, 3, 6):
        part = spec.render(df, ids, chunk_rows=size)
        assert part.skipped == whole.skipped
        assert list(spec.encode(part)) == want


def test_a_value_that_cannot_be_rendered_is_named_in_a_later_chunk():
    df = pd.DataFrame({"t": ["ok"] * 5 + ["bad \ud800"] + ["ok"]}, dtype=object, index=list("abcdefg"))
    spec = MapSpec.build("{t}", columns=["t"], model="m")
    with pytest.raises(TemplateError, match=r"column 't'.*'f'"):
        spec.render(df, unique_ids(df.index), chunk_rows=2)
    num = pd.DataFrame({"p": [1.0, 2.0, 3.0, 4.0, "x"]}, dtype=object)
    spec = MapSpec.build("{p:.2f}", columns=["p"], model="m")
    with pytest.raises(TemplateError, match=r"'4'"):
        spec.render(num, unique_ids(num.index), chunk_rows=2)


def test_the_fingerprint_follows_the_values_not_the_memory_layout(tmp_path):
    df = pd.DataFrame({"t": [f"text {i}" for i in range(50)], "n": range(50)})
    spec = MapSpec.build("{t} {n}", columns=["t", "n"], model="m")
    ids = unique_ids(df.index)
    fp = fingerprint(spec, spec.render(df, ids), "batch")
    df.to_parquet(tmp_path / "f.parquet", row_group_size=7)  # read back as several Arrow chunks
    again = pd.read_parquet(tmp_path / "f.parquet")
    assert pa.chunked_array(pa.array(again["t"].array)).num_chunks > 1
    assert fingerprint(spec, spec.render(again, ids), "batch") == fp
    assert fingerprint(spec, spec.render(pd.concat([df.iloc[:20], df.iloc[20:]]), ids), "batch") == fp
    changed = df.copy()
    changed.loc[45, "t"] = "other"
    assert fingerprint(spec, spec.render(changed, ids), "batch") != fp
    assert fingerprint(spec, spec.render(df, ids), "realtime") != fp

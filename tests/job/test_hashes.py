"""RowHashes answers like the dict it replaces: custom_id -> request hash, first one kept."""

import random

import pyarrow as pa
import pytest

from pdbatch.errors import JobError
from pdbatch.job.hashes import RowHashes


def first_hashes(ids, hashes):
    """What a dict that keeps an id's first hash holds: what RowHashes must answer."""
    want = {}
    for cid, h in zip(ids, hashes):
        want.setdefault(cid, h)
    return want


def test_row_hashes_answer_like_a_dict_that_keeps_the_first_hash():
    rng = random.Random(3)
    ids = [f"id {rng.randrange(500)}" for _ in range(800)]  # repeats, as a re-sent row would be
    hashes = [f"{rng.getrandbits(128):032x}" for _ in ids]
    want = first_hashes(ids, hashes)
    got = RowHashes()
    for start in range(0, len(ids), 64):
        got.add(ids[start:start + 64], hashes[start:start + 64])
        probe = ids[:start + 64] + ["absent", "id -1"]
        assert got.get_many(probe) == [want.get(c) for c in probe]
    assert got.get_arrow(["absent"] + ids[:5]).to_pylist() == [None] + [want[c] for c in ids[:5]]
    table = got.arrow()
    assert table.column("custom_id").to_pylist() == ids and table.column("hash").to_pylist() == hashes
    back = RowHashes.from_arrow(table.column("custom_id"), table.column("hash"))
    assert back.get_many(list(want)) == list(want.values()) and len(back) == len(ids)
    assert "absent" not in back and ids[0] in back


def test_lookups_between_adds_fold_recent_ids_into_a_new_index(monkeypatch):
    import pdbatch.job.hashes as mod

    monkeypatch.setattr(mod, "_FOLD", 10)
    h = RowHashes()
    seen = {}
    for k in range(300):  # answers looked up while later rows are still being added
        cid, digest = f"r{k % 250}", f"{k:032x}"
        h.add([cid], [digest])
        seen.setdefault(cid, digest)
        assert h.get(cid) == seen[cid] and h.get(f"r{k // 2}") == seen[f"r{k // 2}"]
    assert h.get_many([f"r{k}" for k in range(250)]) == [seen[f"r{k}"] for k in range(250)]
    assert len(h._recent) <= max(10, len(h) // 4)


def _hex(i):
    return f"{i * 7919:032x}"


@pytest.mark.parametrize("breaker", [None, "x", "007", "+9", " 9", "3"])
def test_ids_that_count_up_answer_like_any_others(breaker):
    """A RangeIndex job's ids ("0", "1", ...) are kept as a count; an id that breaks it keeps every lookup right."""
    ids = [str(i) for i in range(5, 305)]
    if breaker is not None:
        ids.insert(150, breaker)  # "3": an id before the count, "007": the number 7 written another way
    hashes = [_hex(i) for i in range(len(ids))]
    want = first_hashes(ids, hashes)
    got = RowHashes()
    for start in range(0, len(ids), 50):
        got.add(ids[start:start + 50], hashes[start:start + 50])
    probe = ["5", "304", "305", "4", "-1", "0", "1e2", "", "150", *ids[140:160]]
    assert got.get_many(probe) == [want.get(c) for c in probe]
    assert got.get_arrow(pa.array(probe)).to_pylist() == [want.get(c) for c in probe]
    assert got.positions(pa.array(["5", "304", "nope"])).tolist() == [0, ids.index("304"), -1]
    assert list(got) == ids and len(got) == len(ids)
    table = got.arrow()
    assert table.column("custom_id").to_pylist() == ids and table.column("hash").to_pylist() == hashes
    back = RowHashes.from_arrow(table.column("custom_id"), table.column("hash"))
    assert back.get_many(probe) == [want.get(c) for c in probe] and list(back) == ids


@pytest.mark.parametrize("bad", ["xyz", "g" * 32, "0" * 31, "é" * 32, None])
def test_a_hash_that_is_not_32_hex_digits_is_refused_and_nothing_is_added(bad):
    h = RowHashes()
    h.add(["a"], ["0" * 32])
    with pytest.raises(JobError, match="is not 32 hex digits.*PDBATCH_HOME"):
        h.add(["b"], [bad])
    assert len(h) == 1 and h.get("a") == "0" * 32 and h.get("b") is None


def test_hashes_in_either_case_come_back_in_lower_case_and_survive_the_store_table():
    h = RowHashes()
    h.add(["a", "b"], ["0123456789ABCDEF" * 2, "fedcba9876543210" * 2])
    assert h.values() == ["0123456789abcdef" * 2, "fedcba9876543210" * 2]
    table = h.arrow()  # read back from chunks that are slices (an offset into Arrow's buffers)
    full = RowHashes.from_arrow(table.column("custom_id"), pa.chunked_array([table.column("hash").slice(0, 1),
                                                                              table.column("hash").slice(1)]))
    assert full.get_many(["b", "a"]) == ["fedcba9876543210" * 2, "0123456789abcdef" * 2]

"""Tests for pdbatch/job/store.py, migrations.py and segments.py: versions, migrations, bulk answers, the cache."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import openai
import pandas as pd
import pyarrow as pa
import pytest

import pdbatch
from pdbatch.core.answers import Answers
from pdbatch.core.records import Result
from pdbatch.errors import JobError
from pdbatch.job.migrations import SCHEMA_VERSION
from pdbatch.job import segments
from pdbatch.job.hashes import RowHashes
from pdbatch.job.store import JobRecord, Store

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1.sql"
V1_JOB = "job_20261130000000_v1fixture0"
FIXTURE_V2 = Path(__file__).parent / "fixtures" / "store_v2.sql"
V2_JOB = "job_20261203000000_v2fixture0"


def old_store(tmp_path, fixture: Path = FIXTURE, job: str = V1_JOB) -> Path:
    """A store an earlier release wrote, checked in as SQL (by default the one before migrations existed)."""
    workdir = tmp_path / "jobs" / job
    workdir.mkdir(parents=True)
    path = tmp_path / "store.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(fixture.read_text().replace("@WORKDIR@", str(workdir)))
    db.close()
    pd.DataFrame({"t": ["a", "b"]}, index=["x", "y"]).to_parquet(workdir / "host.parquet")
    (workdir / "host.json").write_text('{"series": false}')
    return path


def h(i) -> str:
    """A request hash like the real ones (hex of 16 random-looking bytes)."""
    return hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest()


def chat(cid, text, finish="stop", usage=None):
    return Result(cid, {"choices": [{"message": {"content": text}, "finish_reason": finish}],
                        "usage": usage or {"prompt_tokens": 3, "completion_tokens": 1}}, status_code=200)


def test_a_v1_store_is_migrated_and_its_job_reattaches(tmp_path, monkeypatch):
    path = old_store(tmp_path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 0
    monkeypatch.setenv("PDBATCH_HOME", str(tmp_path))
    store = Store(str(path))
    assert store.version == SCHEMA_VERSION
    rec = store.job(V1_JOB)
    assert rec.state == "finished" and rec.v == 1
    assert set(store.row_hashes(V1_JOB)) == {"x", "y"}
    assert store.answers(V1_JOB).arrow("content").to_pylist() == ["answer a", "answer b"]
    # The old job re-attaches and answers from the store: its client points nowhere, so any call would fail.
    nowhere = openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=1)
    job = pdbatch.Job.load(V1_JOB, store=store, client=nowhere)
    out = job.result()
    assert out["llm_output"].tolist() == ["answer a", "answer b"] and out["llm_error"].isna().all()
    # The old answers serve the cache of new jobs too.
    assert len(store.cached(store.row_hashes(V1_JOB).values())) == 2
    store.close()
    assert Store(str(path)).version == SCHEMA_VERSION  # opening again migrates nothing


def test_a_v2_store_is_migrated_its_segments_kept_and_its_job_reattaches(tmp_path, monkeypatch):
    # Written by the release of schema version 2 (a segment blob inside the segments row), dumped as SQL.
    path = old_store(tmp_path, FIXTURE_V2, V2_JOB)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
    monkeypatch.setenv("PDBATCH_HOME", str(tmp_path))
    store = Store(str(path))
    assert store.version == SCHEMA_VERSION
    assert set(store.row_hashes(V2_JOB)) == {"x", "y"}
    assert store.answers(V2_JOB).arrow("content").to_pylist() == ["answer a", "answer b"]
    assert store.count_answers(V2_JOB) == 2
    nowhere = openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=1)
    out = pdbatch.Job.load(V2_JOB, store=store, client=nowhere).result()
    assert out["llm_output"].tolist() == ["answer a", "answer b"] and out["llm_error"].isna().all()
    assert [v[1] for v in store.cached(store.row_hashes(V2_JOB).values()).values()] == ["answer a", "answer b"]
    # New segments go beside the moved one, their blobs in the table of their own.
    hashes = {str(i): h(i) for i in range(100)}
    assert store.put_answers("job_b", Answers.from_results([chat(str(i), f"t{i}") for i in range(100)]), hashes) == 100
    assert store.answers("job_b").arrow("content").to_pylist() == [f"t{i}" for i in range(100)]
    assert store.cached([h(42)])[h(42)][1] == "t42"
    db = sqlite3.connect(path)
    assert "data" not in [r[1] for r in db.execute("PRAGMA table_info(segments)")]
    assert db.execute("SELECT COUNT(*) FROM segment_data").fetchone()[0] == 2
    store.close()


def test_blobs_are_the_last_column_of_their_tables(tmp_path):
    """SQLite builds a row whole in memory when its blob is followed by other columns (a shard's: tens of MB)."""
    db = sqlite3.connect(tmp_path / "s.sqlite3")
    Store(str(tmp_path / "s.sqlite3")).close()
    for table in ("segment_data", "row_sets"):
        assert [r[1] for r in db.execute(f"PRAGMA table_info({table})")][-1] == "data"


def test_a_store_from_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "store.sqlite3"
    Store(str(path)).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(JobError, match="newer than this pdbatch reads"):
        Store(str(path))


def test_a_job_record_from_a_newer_release_is_refused(tmp_path):
    store = Store(str(tmp_path / "s.sqlite3"))
    store.create_or_attach(JobRecord("job_new", 0.0, "fp", "batch", "m", "/v1/chat/completions", 1, v=99))
    with pytest.raises(JobError, match="newer pdbatch"):
        store.job("job_new")


def test_bulk_answers_go_to_one_segment_and_serve_the_cache(tmp_path):
    store = Store(str(tmp_path / "s.sqlite3"))
    n = 500
    results = [chat(str(i), f"t{i}") for i in range(n)] + [chat("bad", "x", finish="length")]
    hashes = {str(i): h(i) for i in range(n)} | {"bad": h("bad"), "other": h("other")}
    before = store.cost["written"]
    assert store.put_answers("job_a", Answers.from_results(results), hashes) == n + 1
    assert store.cost["written"] - before == n + 1 and store.cost["write_seconds"] > 0
    a = store.answers("job_a")
    assert len(a) == n + 1 and a.is_arrow("content")
    hits = store.cached([h(7), h("bad"), h("other")])
    assert list(hits) == [h(7)]  # only successes are served; an unknown hash is no hit
    assert hits[h(7)][1] == "t7"
    assert store.count_answers("job_a") == n + 1 and store.count_answers("job_a", ok_only=True) == n


def test_a_later_attempt_replaces_and_a_success_is_never_replaced_by_a_failure(tmp_path):
    store = Store(str(tmp_path / "s.sqlite3"))
    hashes = {str(i): h(i) for i in range(100)}
    first = [chat(str(i), "first") if i % 2 else Result(str(i), None, {"code": "server_error", "message": "x"})
             for i in range(100)]
    store.put_answers("j", Answers.from_results(first), hashes, attempt=0)
    store.put_answers("j", Answers.from_results([chat(str(i), "retry") for i in range(0, 100, 2)]), hashes,
                      attempt=1)
    store.put_answers("j", Answers.from_results([Result("1", None, {"code": "dup", "message": "late failure"})]),
                      hashes, attempt=0)
    got = dict(zip(store.answers("j").custom_id, store.answers("j").content))
    assert got["0"] == "retry" and got["1"] == "first" and got["3"] == "first" and len(got) == 100


def test_a_64_bit_key_collision_is_a_cache_miss_never_a_wrong_answer(tmp_path):
    store = Store(str(tmp_path / "s.sqlite3"))
    a, b = "ab" * 8 + "0" * 16, "ab" * 8 + "1" * 16  # the same first 8 bytes: the same index key
    rows = [chat(str(i), f"t{i}") for i in range(70)]
    store.put_answers("j1", Answers.from_results(rows), {"0": a} | {str(i): h(i) for i in range(1, 70)})
    store.put_answers("j2", Answers.from_results(rows), {"0": b} | {str(i): h(i + 100) for i in range(1, 70)})
    assert store.cached([b])[b][1] == "t0"
    assert store.cached([a]) == {}  # its key now points at b's answer, which the full hash refuses


def test_a_jobs_answers_read_their_texts_only_where_asked_a_segment_at_a_time(tmp_path):
    """``answers()`` reads no text up front; asked-for rows come back right, across segments and single rows."""
    store = Store(str(tmp_path / "s.sqlite3"))
    hashes = {str(i): h(i) for i in range(300)}
    store.put_answers("j", Answers.from_results([chat(str(i), f"a{i}") for i in range(200)]), hashes)
    store.put_answers("j", Answers.from_results([chat(str(i), f"b{i}") for i in range(100, 300)]), hashes, attempt=1)
    store.put_answers("j", Answers.from_results([chat("5", "alone"), chat("299", "late")]), hashes, attempt=2)
    writer, store = store, Store(str(tmp_path / "s.sqlite3"))  # read as another process (a restarted kernel) does
    reads = lambda: (store.cost["segments_read"], store.cost["texts_read"])  # noqa: E731
    before = reads()
    a = store.answers("j")
    assert len(a) == 300 and reads() == (before[0] + 2, before[1])  # each segment read once, no text kept
    mine = writer.answers("j")  # the writer knows its segments' other columns: it reads only texts asked for
    assert writer.cost["segments_read"] == 0
    assert mine.to_frame().equals(a.to_frame()) and writer.cost["segments_read"] == 2
    assert writer.answers("j").custom_id == a.custom_id and writer.cost["segments_read"] == 4  # handed over once
    ids = a.custom_id
    want = {"0": "a0", "5": "alone", "150": "b150", "299": "late", "99": "a99"}
    rows = np.array([ids.index(k) for k in want])
    before = reads()
    assert a.take("content", rows) == list(want.values())
    assert reads() == (before[0] + 2, before[1] + 5)  # one read per segment holding an asked-for row
    before = reads()
    assert a.take("content", np.array([ids.index("150"), ids.index("151")])) == ["b150", "b151"]
    assert reads() == (before[0] + 1, before[1] + 2)
    whole = dict(zip(ids, a.arrow("content").to_pylist()))
    assert whole == {str(i): "alone" if i == 5 else "late" if i == 299 else f"a{i}" if i < 100 else f"b{i}"
                     for i in range(300)}
    assert a.origin[ids.index("5")] == -1 and a.origin[ids.index("0")] != a.origin[ids.index("150")] >= 0


def test_answers_stored_after_a_poll_are_still_one_per_custom_id(tmp_path):
    """A poll that found every id once lets the join skip that check only while nothing new is stored."""
    store = Store(str(tmp_path / "s.sqlite3"))
    hashes = {str(i): h(i) for i in range(200)}
    store.put_answers("j", Answers.from_results([chat(str(i), f"a{i}") for i in range(100)]), hashes)
    assert store.count_answers("j") == 100  # a poll: every id once so far
    store.put_answers("j", Answers.from_results([chat(str(i), f"b{i}") for i in range(50, 150)]), hashes, attempt=1)
    store.put_answers("j", Answers.from_results([chat("7", "alone")]), hashes, attempt=2)
    a = store.answers("j")
    got = dict(zip(a.custom_id, a.arrow("content").to_pylist()))
    assert len(a) == 150 == len(got)
    assert got["7"] == "alone" and got["10"] == "a10" and got["60"] == "b60" and got["149"] == "b149"
    assert store.count_answers("j") == 150 and len(store.answers("j")) == 150  # after a poll that saw them all


def test_polls_after_each_segment_count_each_row_once(tmp_path):
    """A poll after each shard checks only the new shard's ids against the rows already answered."""
    store = Store(str(tmp_path / "s.sqlite3"))
    hashes = {str(i): h(i) for i in range(400)}

    def put(job, ids, text="x", attempt=0, finish="stop"):
        store.put_answers(job, Answers.from_results([chat(str(i), text, finish) for i in ids]), hashes, attempt=attempt)

    def polled(job):
        return store.count_answers(job), store.count_answers(job, ok_only=True), len(store.answers(job))

    put("j", range(100))
    assert polled("j") == (100, 100, 100)
    put("j", range(100, 200))  # disjoint: no row twice
    assert polled("j") == (200, 200, 200)
    put("j", range(50, 120), "cut", attempt=1, finish="length")  # a later attempt of 70 answered rows replaces them
    assert polled("j") == (200, 130, 200)
    put("j", range(370, 440))  # ids the job never sent are not stored
    assert polled("j") == (230, 160, 230)
    put("k", range(100))
    assert polled("k") == (100, 100, 100)
    put("k", [*range(300, 370), 305])  # a row twice within one new segment
    assert polled("k") == (170, 170, 170)


@pytest.mark.parametrize("unknown", [False, True])
def test_a_shard_answered_out_of_order_is_stored_in_row_order(unknown):
    """Output files list answers in any order; a segment keeps them in the job's row order (the join slices runs)."""
    from pdbatch.job.answer_store import segment_table
    from pdbatch.job.hashes import RowHashes

    rows = RowHashes()
    rows.add([str(i) for i in range(200)], [h(i) for i in range(200)])
    order = [*range(150, 100, -1), 7, *range(0, 7), *range(8, 100)]
    if unknown:
        order.insert(30, 999)  # an id the job never sent
    table = segment_table(Answers.from_results([chat(str(i), f"a{i}") for i in order]), rows)
    want = sorted(i for i in order if i < 200)
    assert table.column("custom_id").to_pylist() == [str(i) for i in want]
    assert table.column("content").to_pylist() == [f"a{i}" for i in want]
    assert table.column("hash").to_pylist() == [h(i) for i in want]


def test_answers_kept_for_a_job_hold_small_integers_in_32_bits_and_large_ones_whole(tmp_path):
    """The columns a job keeps for its polls and join are narrow where they fit; the values read back are the same."""
    store = Store(str(tmp_path / "s.sqlite3"))
    hashes = {str(i): h(i) for i in range(300)}
    small = [chat(str(i), f"t{i}") for i in range(100)]
    big = [Result(str(i), {"choices": [{"message": {"content": "b"}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 2**40 + i, "completion_tokens": 1}}, status_code=200)
           for i in range(100, 200)]
    store.put_answers("j", Answers.from_results(small), hashes)
    a = store.answers("j")  # the segment this process wrote: the table it kept
    assert a.arrow("prompt_tokens").type == pa.int32() and a.arrow("status_code").type == pa.int32()
    assert a.prompt_tokens == [3] * 100 and a.status_code == [200] * 100 and a.usage.prompt_tokens == 300
    store.put_answers("j", Answers.from_results(big), hashes)
    assert store.count_answers("j") == 200  # a poll over a narrow and a wide segment
    a = store.answers("j")
    assert a.arrow("prompt_tokens").type == pa.int64()  # one segment's did not fit 32 bits: promoted, not cut
    assert a.usage.prompt_tokens == 300 + sum(2**40 + i for i in range(100, 200))
    again = Store(str(tmp_path / "s.sqlite3")).answers("j")  # read back from the file by another connection
    assert again.usage == a.usage and sorted(again.custom_id, key=int) == [str(i) for i in range(200)]


class _NoBlobOpen:
    """A connection as Python 3.10 has it: no ``blobopen``."""

    def __init__(self, db):
        self.execute = db.execute


@pytest.mark.parametrize("wrap", [lambda db: db, _NoBlobOpen], ids=["blobopen", "bound"])
def test_a_blob_is_written_whole_and_replaced_whole(tmp_path, wrap):
    """Segments and row sets are written into their row in place (or bound on 3.10); another connection reads the same bytes."""
    path = str(tmp_path / "b.sqlite3")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE row_sets(job_id TEXT PRIMARY KEY, v INTEGER NOT NULL, data BLOB NOT NULL)")
    big = pa.table({"x": np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8)})  # many record batches
    tables = {"big": big, "empty": big.slice(0, 0), "small": big.slice(5, 10)}
    blobs = {name: segments.Encoded(t) for name, t in tables.items()}
    conn = wrap(db)
    first = segments.insert_blob(conn, "INSERT OR REPLACE", "row_sets", {"job_id": "a", "v": 1}, blobs["big"])
    assert sqlite3.connect(path).execute("SELECT length(data) FROM row_sets").fetchone() == (len(blobs["big"]),)
    empty = segments.insert_blob(conn, "INSERT OR REPLACE", "row_sets", {"job_id": "e", "v": 1}, blobs["empty"])
    again = segments.insert_blob(conn, "INSERT OR REPLACE", "row_sets", {"job_id": "a", "v": 2}, blobs["small"])
    other = sqlite3.connect(path)
    rows = dict(other.execute("SELECT job_id, data FROM row_sets").fetchall())
    assert rows == {"a": blobs["small"].to_buffer().to_pybytes(), "e": blobs["empty"].to_buffer().to_pybytes()}
    assert other.execute("SELECT rowid, v FROM row_sets WHERE job_id = 'a'").fetchone() == (again, 2)
    assert other.execute("SELECT rowid FROM row_sets WHERE job_id = 'e'").fetchone() == (empty,) and first != empty
    for name in ("big", "small"):  # each read back whole, as the table written
        conn.execute("INSERT OR REPLACE INTO row_sets (job_id, v, data) VALUES ('a', 3, x'')")
        segments.insert_blob(conn, "INSERT OR REPLACE", "row_sets", {"job_id": "a", "v": 4}, blobs[name])
        data = other.execute("SELECT data FROM row_sets WHERE job_id = 'a'").fetchone()[0]
        assert pa.ipc.open_stream(pa.py_buffer(data)).read_all().equals(tables[name])


def test_a_blob_of_the_wrong_size_fails_loudly(tmp_path):
    """The stream is written into a blob made its size: one that would run past the end raises, nothing is cut."""
    db = sqlite3.connect(str(tmp_path / "b.sqlite3"), isolation_level=None)
    db.execute("CREATE TABLE row_sets(job_id TEXT PRIMARY KEY, v INTEGER NOT NULL, data BLOB NOT NULL)")
    blob = segments.Encoded(pa.table({"x": np.arange(100_000)}))
    blob.table = pa.table({"x": np.arange(200_000)})  # now longer than the size the row was made
    with pytest.raises(ValueError):
        segments.insert_blob(db, "INSERT", "row_sets", {"job_id": "a", "v": 1}, blob)


def test_segments_and_row_hashes_read_back_by_another_connection(tmp_path):
    """What a job stores as blobs (a segment, its rows' hashes) is what a fresh connection reads."""
    path = str(tmp_path / "s.sqlite3")
    store = Store(path)
    hashes = RowHashes()
    hashes.add([str(i) for i in range(300)], [h(i) for i in range(300)])
    assert store.put_answers("j", Answers.from_results([chat(str(i), f"t{i}") for i in range(300)]), hashes) == 300
    store.put_rows("j", hashes)
    again = Store(path)
    assert again.answers("j").content == [f"t{i}" for i in range(300)]
    back = again.row_hashes("j")
    assert back.get_many(["0", "299"]) == [h(0), h(299)] and len(back) == 300


def test_kept_text_columns_without_a_value_hold_no_offsets_and_read_back_as_text(tmp_path):
    """A segment with no refusal and no error keeps those columns as bare nulls; readers still see text columns."""
    plain = Answers.from_results([chat(str(i), f"t{i}") for i in range(100)])
    table = segments.table_of(plain, [h(i) for i in range(100)], 0)
    kept = segments.lean(table)
    assert {kept.schema.field(c).type for c in ("refusal", "error_code", "error_message")} == {pa.null()}
    assert kept.schema.field("finish_reason").type == pa.dictionary(pa.int8(), pa.string())  # "stop" in every row
    failed = Answers.from_results([Result("x", None, error={"code": "server_error", "message": "boom"})])
    kept_failed = segments.lean(segments.table_of(failed, [h("x")], 0))
    assert kept_failed.schema.field("error_code").type == pa.string()
    store = Store(str(tmp_path / "s.sqlite3"))
    hashes = {str(i): h(i) for i in range(100)} | {"x": h("x")}
    store.put_answers("j", plain, hashes)
    store.put_answers("j", Answers.from_results([Result("x", None, error={"code": "server_error", "message": "boom"})]
                                                * 64), hashes)
    a = store.answers("j")  # one kept segment with bare nulls, one with an error: read as one
    assert a.arrow("refusal").type == pa.string() and a.arrow("error_code").type == pa.string()
    assert sorted(v for v in a.error_code if v) == ["server_error"] and a.refusal == [None] * 101
    assert a.to_frame().equals(Store(str(tmp_path / "s.sqlite3")).answers("j").to_frame())


def test_columns_of_one_value_are_kept_as_that_value_and_read_back_plain(tmp_path):
    """A clean segment keeps status, finish reason and token counts that every row shares as one value (one
    byte a row, shared); a segment where they differ keeps them plain; read together they are plain columns."""
    same = Answers.from_results([chat(str(i), f"t{i}") for i in range(100)])
    kept = segments.lean(segments.table_of(same, [h(i) for i in range(100)], 0))
    one = ("status_code", "finish_reason", "has_choice", "prompt_tokens", "completion_tokens", "cached_tokens")
    assert all(pa.types.is_dictionary(kept.schema.field(c).type) for c in one)
    indices = {kept.column(c).chunk(0).indices.buffers()[1].address for c in one}
    assert len(indices) == 1  # the columns share one buffer of indices
    assert [kept.schema.field(c).type for c in ("custom_id", "attempt", "seq", "ok")] == [
        pa.string(), pa.int32(), segments.SEQ, pa.bool_()]  # what the polls read: seq, the segment's id, as one value
    mixed = Answers.from_results([chat(str(i), f"t{i}", finish="length" if i == 103 else "stop",
                                       usage={"prompt_tokens": i, "completion_tokens": 2}) for i in range(100, 200)])
    kept_mixed = segments.lean(segments.table_of(mixed, [h(i) for i in range(100, 200)], 0))
    assert kept_mixed.schema.field("finish_reason").type == pa.string()
    assert kept_mixed.schema.field("prompt_tokens").type == pa.int32()
    assert pa.types.is_dictionary(kept_mixed.schema.field("completion_tokens").type)
    store = Store(str(tmp_path / "s.sqlite3"))
    hashes = {str(i): h(i) for i in range(200)}
    store.put_answers("j", same, hashes)
    store.put_answers("j", mixed, hashes)
    a = store.answers("j")  # kept tables, one of them with these columns plain
    assert a.arrow("finish_reason").type == pa.string() and a.arrow("status_code").type == pa.int32()
    assert a.finish_reason.count("length") == 1 and a.status_code == [200] * 200
    fresh = Store(str(tmp_path / "s.sqlite3")).answers("j")  # read from the file: the same answers and usage
    assert a.to_frame().equals(fresh.to_frame()) and a.usage == fresh.usage == same.usage + mixed.usage


def test_a_kept_table_shares_no_buffer_with_the_segment_it_was_made_of_but_its_ids():
    """What a job keeps of a segment is copied: the segment's buffers (its texts above all) can all be freed. Its
    ids are the segment's own (the answers parsed on arrival hold them too: one copy, not two)."""
    plain = Answers.from_results([chat(str(i), f"t{i}") for i in range(100)])
    table = segments.table_of(plain, [h(i) for i in range(100)], 0)
    kept = segments.lean(table)

    def addresses(t, cols):
        return {b.address for c in cols for chunk in t.column(c).chunks for b in chunk.buffers() if b is not None}
    assert not addresses(kept, [c for c in kept.column_names if c != "custom_id"]) & addresses(table, table.column_names)
    assert addresses(kept, ["custom_id"]) == addresses(table, ["custom_id"])
    assert kept.column("custom_id").to_pylist() == table.column("custom_id").to_pylist()


def test_a_segment_table_holds_the_answers_own_chunks_and_its_ids_in_one_buffer():
    """A shard's answers are not copied to be stored (they are held while stored and parsed); only the ids are
    made one buffer, which the kept table and the answers parsed on arrival then share."""
    parts = [Answers.from_results([chat(str(i), f"t{i}") for i in range(k, k + 50)]) for k in (0, 50)]
    answers = Answers(**{name: pa.chunked_array([c for p in parts for c in p.arrow(name).chunks])
                         for name in ("custom_id",) + Answers.COLUMNS})
    table = segments.table_of(answers, [h(i) for i in range(100)], 0)

    def addresses(col):
        return {b.address for chunk in col.chunks for b in chunk.buffers() if b is not None}
    assert table.column("content").num_chunks == 2
    assert addresses(table.column("content")) == addresses(answers.arrow("content"))
    assert table.column("custom_id").num_chunks == 1
    assert table.column("custom_id").to_pylist() == [str(i) for i in range(100)]
    assert segments.lean(table).column("custom_id").chunks[0].buffers()[2].address == \
        table.column("custom_id").chunks[0].buffers()[2].address

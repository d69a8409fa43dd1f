"""A batch shard's record: its lines' custom_ids kept compact, given back as a list."""

from __future__ import annotations

import orjson
import pyarrow as pa

from pdbatch.backends.batch_state import ShardState


def test_a_shards_ids_are_kept_as_one_arrow_array_and_read_back_from_its_file_when_unknown(tmp_path):
    ids = [str(i) for i in range(1000)] + ["é|x"]
    written = ShardState(0, str(tmp_path / "s.jsonl"), len(ids), 0, ids=ids)
    assert isinstance(written.ids, pa.Array)  # not a Python string per line, held until the join
    assert written.line_ids() == ids and written.line_ids() is not written.line_ids()
    path = tmp_path / "b.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"custom_id": cid, "body": {}}) + b"\n" for cid in ids))
    reread = ShardState(1, str(path), len(ids), path.stat().st_size)  # a process that did not write it
    assert reread.ids is None and reread.line_ids() == ids and isinstance(reread.ids, pa.Array)


def _answers(pairs):
    from pdbatch.core.answers import Answers
    from pdbatch.core.records import Result
    return Answers.from_results([
        Result(cid, {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}, status_code=200)
        for cid, finish in pairs])


def test_a_shard_whose_lines_all_succeeded_lets_go_of_its_ids_once_stored_and_reads_them_back(tmp_path):
    ids = [str(i) for i in range(100)]
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"custom_id": cid, "body": {}}) + b"\n" for cid in ids))
    clean = ShardState(0, str(path), len(ids), path.stat().st_size, ids=ids)
    clean.ingest(_answers([(cid, "stop") for cid in reversed(ids)]))  # any order
    assert clean.ingested == 1 and clean.clean and clean.ids is None
    assert clean.line_ids() == ids  # anything that still asks for them reads them from the file
    # Kept where a retry round or a row's reason may ask for them: a failure, a line without an answer, an id twice,
    # an answer for an id the shard did not send (a line of it then has none), a shard whose ids are not known here.
    for pairs, known in (([(cid, "stop") for cid in ids[:-1]] + [(ids[-1], "length")], ids),
                         ([(cid, "stop") for cid in ids[:-1]], ids),
                         ([(cid, "stop") for cid in ids[:-1]] + [(ids[0], "stop")], ids),
                         ([(cid, "stop") for cid in ids[:-1]] + [("other", "stop")], ids),
                         ([(cid, "stop") for cid in ids], None)):
        st = ShardState(1, str(path), len(ids), path.stat().st_size, ids=known)
        st.ingest(_answers(pairs))
        assert st.ingested == 1 and not st.clean and st.line_ids() == ids
        assert known is None or st.ids is not None

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

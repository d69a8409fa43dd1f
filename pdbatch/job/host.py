"""The job's copy of the caller's frame and of the custom_ids it was sent with.

``Job.load(id).result()`` (another process, a restarted kernel) joins the
answers onto this copy. The custom_ids are stored beside the frame, never
rebuilt from the copy's index: an index does not always survive a round trip
through Parquet (an object index holding ``1, None, 3`` comes back as floats).
The copy is written in row groups, in a thread of its own, while the first
shards are uploaded.
"""

from __future__ import annotations

import os
import threading
from typing import List, Optional, Tuple, Union

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["HostCopy", "load_host"]

_FRAME, _IDS, _META = "host.parquet", "host-ids.arrow", "host.json"
#: Rows converted to Arrow at a time: the copy never holds a second whole frame in memory.
_CHUNK = 100_000


class HostCopy:
    """Write the copy in a background thread: ``HostCopy(host, ids, workdir).start()``, later ``.finish()``.

    ``finish()`` returns None when the copy is on disk, else the reason it
    could not be written (the job still runs; only ``Job.load(...).result()``
    is then unavailable).
    """

    def __init__(self, host: Union[pd.DataFrame, pd.Series], ids: List[str], workdir: str) -> None:
        self.host, self.ids, self.workdir = host, ids, workdir
        self.error: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name="pdbatch-host-copy", daemon=True)

    def start(self) -> "HostCopy":
        self._thread.start()
        return self

    def finish(self) -> Optional[str]:
        self._thread.join()
        return self.error

    def _run(self) -> None:
        try:
            save_host(self.host, self.ids, self.workdir)
        except Exception as err:  # a frame Arrow cannot store: say why, the job goes on
            self.error = f"{type(err).__name__}: {err}"
            for name in (_FRAME, _IDS, _META):
                try:
                    os.remove(os.path.join(self.workdir, name))
                except OSError:
                    pass


def save_host(host: Union[pd.DataFrame, pd.Series], ids: List[str], workdir: str) -> None:
    """Write the frame (in row groups) and its custom_ids; the metadata file last, so a torn copy is never read."""
    frame = host.to_frame() if isinstance(host, pd.Series) else host
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, _FRAME + ".part")
    writer = None
    try:
        for start in range(0, max(len(frame), 1), _CHUNK):
            table = pa.Table.from_pandas(frame.iloc[start:start + _CHUNK], preserve_index=True)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            elif not table.schema.equals(writer.schema):
                table = table.cast(writer.schema)  # raises when a later chunk does not fit the first one's types
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, os.path.join(workdir, _FRAME))
    with pa.OSFile(os.path.join(workdir, _IDS), "wb") as sink:
        with pa.ipc.new_file(sink, pa.schema([("custom_id", pa.string())])) as out:
            out.write_table(pa.table({"custom_id": pa.array(ids, pa.string())}))
    with open(os.path.join(workdir, _META), "wb") as fh:
        fh.write(orjson.dumps({"series": isinstance(host, pd.Series), "v": 2}))


def load_host(workdir: str) -> Tuple[Union[pd.DataFrame, pd.Series, None], Optional[List[str]]]:
    """``(frame, custom_ids)`` of a job's copy; ``(None, None)`` without one, ids None for an older copy."""
    meta_path = os.path.join(workdir, _META)
    if not os.path.exists(meta_path) or not os.path.exists(os.path.join(workdir, _FRAME)):
        return None, None
    with open(meta_path, "rb") as fh:
        meta = orjson.loads(fh.read())
    frame = pd.read_parquet(os.path.join(workdir, _FRAME))
    ids = None
    ids_path = os.path.join(workdir, _IDS)
    if os.path.exists(ids_path):
        with pa.memory_map(ids_path) as src:
            ids = pa.ipc.open_file(src).read_all().column("custom_id").to_pylist()
    return (frame.iloc[:, 0] if meta.get("series") else frame), ids

"""The job's copy of the caller's frame and of the custom_ids it was sent with.

``Job.load(id).result()`` (another process, a restarted kernel) joins the
answers onto this copy. The frame is pickled (protocol 5), so that it comes
back exactly as it was given: Parquet re-infers object columns and indexes
(``[None, 0]`` as floats, an object index of ``0, 1, 0.0`` as floats), turns
an int column name into a str, and cannot hold columns ``0`` and ``"0"`` at
once. The custom_ids are stored beside it all the same, never rebuilt from an
index. The copy is written in a thread of its own while the first shards are
uploaded, as pickles of :data:`SLICE` rows one after another: pickling a
whole frame of Arrow strings first copies every column (pandas combines its
chunks), and the allocator keeps that memory afterwards. Copies made by
earlier releases (one pickle, or Parquet) are still read.
"""

from __future__ import annotations

import os
import pickle
import threading
from typing import List, Optional, Sequence, Tuple, Union

import orjson
import pandas as pd
import pyarrow as pa

from ..core.ids import custom_ids, ids_arrow

__all__ = ["HostCopy", "load_host"]

_FRAME, _OLD_FRAME, _IDS, _META = "host.pickle", "host.parquet", "host-ids.arrow", "host.json"
#: Rows per pickled slice of the copy (each slice's column copies are freed before the next is made).
SLICE = 100_000


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
        self._starting = threading.Lock()

    def start(self) -> "HostCopy":
        """Start writing (a later call, from any thread, does nothing)."""
        with self._starting:
            if self._thread.ident is None:
                self._thread.start()
        return self

    def finish(self) -> Optional[str]:
        """Wait for the copy (started now if it was not yet); the reason it failed, or None."""
        self.start()
        self._thread.join()
        return self.error

    def _run(self) -> None:
        try:
            save_host(self.host, self.ids, self.workdir)
        except Exception as err:  # a frame Arrow cannot store: say why, the job goes on
            self.error = f"{type(err).__name__}: {err}"
            for name in (_FRAME, _FRAME + ".part", _IDS, _META):
                try:
                    os.remove(os.path.join(self.workdir, name))
                except OSError:
                    pass


def save_host(host: Union[pd.DataFrame, pd.Series], ids: List[str], workdir: str) -> None:
    """Write the frame (pickled) and its custom_ids; the metadata file last, so a torn copy is never read."""
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, _FRAME + ".part")
    with open(tmp, "wb") as fh:
        for start in range(0, max(len(host), 1), SLICE):  # an empty frame is one (empty) slice
            pickle.dump(host.iloc[start:start + SLICE], fh, protocol=5)
    os.replace(tmp, os.path.join(workdir, _FRAME))
    with pa.OSFile(os.path.join(workdir, _IDS), "wb") as sink:
        with pa.ipc.new_file(sink, pa.schema([("custom_id", pa.string())])) as out:
            out.write_table(pa.table({"custom_id": ids_arrow(ids)}))
    with open(os.path.join(workdir, _META), "wb") as fh:
        fh.write(orjson.dumps({"series": isinstance(host, pd.Series), "v": 4}))


def _joined(parts: list) -> Union[pd.DataFrame, pd.Series]:
    """The slices of a copy as one object again: dtypes, index, names and ``attrs`` as they were."""
    if len(parts) == 1:
        return parts[0]
    whole = pd.concat(parts, axis=0)
    whole.attrs = parts[0].attrs
    return whole


def load_host(workdir: str) -> Tuple[Union[pd.DataFrame, pd.Series, None], Optional[Sequence[str]]]:
    """``(frame, custom_ids)`` of a job's copy; ``(None, None)`` without one, ids None for an older copy."""
    meta_path = os.path.join(workdir, _META)
    if not os.path.exists(meta_path):
        return None, None
    with open(meta_path, "rb") as fh:
        meta = orjson.loads(fh.read())
    if os.path.exists(os.path.join(workdir, _FRAME)):
        with open(os.path.join(workdir, _FRAME), "rb") as fh:  # written by this user's own pdbatch
            host = pickle.load(fh)
            if meta.get("v", 3) >= 4:  # slices: read to the end, then put back together
                parts = [host]
                while fh.peek(1):
                    parts.append(pickle.load(fh))
                host = _joined(parts)
    elif os.path.exists(os.path.join(workdir, _OLD_FRAME)):
        frame = pd.read_parquet(os.path.join(workdir, _OLD_FRAME))
        host = frame.iloc[:, 0] if meta.get("series") else frame
    else:
        return None, None
    ids = None
    ids_path = os.path.join(workdir, _IDS)
    if os.path.exists(ids_path):
        with pa.memory_map(ids_path) as src:
            stored = pa.ipc.open_file(src).read_all().column("custom_id")
        ranged = custom_ids(host.index) if isinstance(host.index, pd.RangeIndex) else None
        # The ids of a RangeIndex, as sent: kept as three numbers, not a million strings.
        ids = ranged if ranged is not None and ids_arrow(ranged).equals(stored.combine_chunks()) else stored.to_pylist()
    return host, ids

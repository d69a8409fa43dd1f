"""Tests for pdbatch/job/host.py: the frame's copy, started once the first requests are out."""

import threading

import pandas as pd

from pdbatch.job.host import HostCopy, load_host


def test_a_copy_started_from_many_threads_is_written_once_and_finish_starts_one_never_started(tmp_path):
    df = pd.DataFrame({"t": ["a", "b", "c"]}, index=[10, 11, 12])
    copy = HostCopy(df, ["10", "11", "12"], str(tmp_path / "one"))
    starters = [threading.Thread(target=copy.start) for _ in range(8)]  # as backends report sends from threads
    for t in starters:
        t.start()
    for t in starters:
        t.join(10)
    assert copy.finish() is None
    back, ids = load_host(str(tmp_path / "one"))
    assert back.equals(df) and ids == ["10", "11", "12"]
    never = HostCopy(df, ["10", "11", "12"], str(tmp_path / "two"))  # nothing was sent: finish() writes it
    assert never.finish() is None and load_host(str(tmp_path / "two"))[0].equals(df)

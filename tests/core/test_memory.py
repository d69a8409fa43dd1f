"""pdbatch.core.memory: a job's Arrow buffers come from the C library's allocator, and the default pool comes back."""

from __future__ import annotations

import threading

import pandas as pd
import pyarrow as pa
import pytest

from pdbatch.core.memory import give_back, in_system_pool, system_pool
from pdbatch.server import BatchServer

glibc = pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "malloc_trim"),
                           reason="the switch applies only where glibc (malloc_trim) is the C library")


def _name() -> str:
    return pa.default_memory_pool().backend_name


@glibc
def test_inside_the_block_arrow_allocates_from_the_system_pool(monkeypatch):
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = _name()
    with system_pool():
        assert _name() == "system"
        with system_pool():  # nested: still the system pool, and the outer block restores
            kept = pa.array(range(100_000))
        assert _name() == "system"
        used = pa.system_memory_pool().bytes_allocated()
        assert used >= kept.nbytes
    assert _name() == before
    del kept  # made inside, freed outside: it goes back to the pool that made it
    assert pa.system_memory_pool().bytes_allocated() <= used - 100_000 * 8
    give_back()


@glibc
def test_an_error_inside_restores_the_default_pool(monkeypatch):
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = _name()

    @in_system_pool
    def fails():
        assert _name() == "system"
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        fails()
    assert _name() == before


def test_a_pool_the_user_chose_is_left_alone(monkeypatch):
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", pa.default_memory_pool().backend_name)
    before = _name()
    with system_pool():
        assert _name() == before


@glibc
def test_blocks_on_two_threads_restore_once_both_left(monkeypatch):
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = _name()
    entered, release = threading.Event(), threading.Event()

    def other():
        with system_pool():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert entered.wait(10)
    with system_pool():
        pass
    assert _name() == "system"  # the other thread is still inside
    release.set()
    t.join(10)
    assert _name() == before


@glibc
def test_map_leaves_the_default_pool_as_it_found_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PDBATCH_HOME", str(tmp_path))
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = _name()
    with BatchServer() as srv:
        out = pd.DataFrame({"w": list("abc")}).llm.map("say {w}", model="m", client=srv.client(), backend="batch",
                                                       progress=False)
    assert out["llm_error"].isna().all() and len(out) == 3
    assert _name() == before

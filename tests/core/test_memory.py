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


#: Run in a fresh interpreter (a small heap: its free chunks cannot serve the blocks asked for): how many
#: of 64 blocks of 512 KiB glibc gave pages of their own, outside a block, inside one, and after it (and of 2 MiB).
_PLACEMENT = r"""
import ctypes, json
from pdbatch.core.memory import system_pool

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p

def mapped(size):
    blocks = []
    for _ in range(64):
        before = libc.mallinfo2().hblkhd
        blocks.append(libc.malloc(size))
        blocks[-1] = (blocks[-1], libc.mallinfo2().hblkhd > before)
    for block, _ in blocks:
        libc.free(ctypes.c_void_p(block))
    return sum(m for _, m in blocks)

libc.free(ctypes.c_void_p(libc.malloc(8 << 20)))  # glibc raises its threshold to 8 MiB on freeing this
out = {"outside": mapped(512 << 10)}
with system_pool():
    out["inside"] = mapped(512 << 10)
out["after"] = mapped(512 << 10)
out["after_2m"] = mapped(2 << 20)
print(json.dumps(out))
"""


def _placement(**env) -> dict:
    import json
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _PLACEMENT], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")} | env)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


mallinfo2 = pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"),
                               reason="needs glibc 2.33 or later (mallinfo2) to see where a block was placed")


@glibc
@mallinfo2
def test_inside_the_block_large_allocations_get_pages_of_their_own_and_after_it_are_reused():
    got = _placement()
    assert got["outside"] <= 8  # glibc had raised its threshold: 512 KiB blocks come from its heap
    assert got["inside"] >= 56  # from 256 KiB on, each block is mapped on its own, given back when freed
    assert got["after"] <= 8 and got["after_2m"] <= 8  # the last block left: glibc's most (32 MiB), buffers reused


@glibc
@mallinfo2
@pytest.mark.parametrize("env", [{"MALLOC_MMAP_THRESHOLD_": "1048576"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}], ids=["env", "tunables"])
def test_a_threshold_the_user_set_is_left_alone(env):
    got = _placement(**env)
    assert got["inside"] <= 8 and got["after"] <= 8  # the user's 1 MiB holds inside the block and after it
    assert got["after_2m"] >= 56

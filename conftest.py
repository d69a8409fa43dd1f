"""Fixtures for everything pytest collects here: the tests in ``tests/`` and the doctests in ``pdbatch/``.

* ``pdbatch_home`` (autouse): ``$PDBATCH_HOME`` points at a fresh directory
  under the test's ``tmp_path``, so neither a test nor a docstring example
  ever writes into the user's job store (``~/.cache/pdbatch``). Its default
  store connection is closed when the test ends.

The fixtures of ``tests/conftest.py`` (servers, clients) build on this one.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def pdbatch_home(tmp_path, monkeypatch):
    """Every test and doctest gets its own job store and job directories under ``$PDBATCH_HOME``."""
    import pdbatch.job.store as store_mod

    home = tmp_path / "pdbatch-home"
    monkeypatch.setenv("PDBATCH_HOME", str(home))
    yield home
    s = store_mod._DEFAULT.pop(str(home / "store.sqlite3"), None)
    if s is not None:
        s.close()

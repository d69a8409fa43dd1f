"""``ddf.llm`` on Dask DataFrames and Series (``pip install "pdbatch[dask]"``).

Importing pdbatch never imports Dask (``import dask.dataframe`` costs more
than the rest of pdbatch together): when ``dask.dataframe`` is already
imported, :func:`register` runs at once; otherwise a one-shot import hook runs
it right after ``dask.dataframe`` is first imported. Without Dask installed
the hook never fires.

See :class:`pdbatch.scale.accessor.DaskAccessor` for the methods.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any, Optional

__all__ = ["register", "register_when_imported"]

_TARGET = "dask.dataframe"


def register() -> None:
    """Register ``.llm`` on Dask DataFrames and Series (imports ``dask.dataframe``)."""
    from dask.dataframe.extensions import register_dataframe_accessor, register_series_accessor

    from .accessor import DaskAccessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # re-registering (a reload) warns
        register_dataframe_accessor("llm")(DaskAccessor)
        register_series_accessor("llm")(DaskAccessor)


def _register_quietly() -> None:
    try:
        register()
    except Exception as err:  # a broken or too old Dask must not break ``import dask.dataframe``
        warnings.warn(f"pdbatch: could not register ddf.llm on Dask ({type(err).__name__}: {err}); "
                      f"pip install 'pdbatch[dask]' for a supported Dask", UserWarning, stacklevel=2)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when ``dask.dataframe`` is about to be imported, runs :func:`register` after it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if name != _TARGET:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot; the real finders find the module below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _register_quietly()

        spec.loader.exec_module = exec_module  # this module's own loader object
        return spec


def register_when_imported() -> None:
    """Register ``.llm`` on Dask now if ``dask.dataframe`` is imported, else as soon as it is."""
    if _TARGET in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())

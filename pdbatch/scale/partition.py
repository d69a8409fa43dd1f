"""What runs on a Dask worker: one partition through the pandas path, as one ordinary pdbatch job.

Each function takes one partition (a pandas object) and the call's checked
arguments, and calls the pandas accessor's method on it
(:class:`pdbatch.accessor.LLMAccessor`): same rendering, same backends, same
job store. A partition's job is found again by the fingerprint of its rows,
so computing the same graph again re-attaches every partition's job, and a
partition Dask retries re-attaches its own without touching the others.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Union

import pandas as pd

from ..accessor import LLMAccessor
from ..backends.pickling import ClientRecipe
from ..errors import JobError
from ..job.start import default_name
from ..job.store import pdbatch_home
from ..pricing.tokens import assume_unavailable
from .meta import conform

__all__ = ["ClientRef", "BackendRef", "check_home", "run_partition", "write_partition", "estimate_partition"]


class ClientRef:
    """A client given to ``ddf.llm.map(client=...)``: the object itself in this process, a recipe elsewhere.

    Pickled (to reach a worker process), it becomes a
    :class:`~pdbatch.backends.pickling.ClientRecipe`: never the API key,
    only the name of the environment variable that holds it.
    """

    def __init__(self, client: Any = None, recipe: Optional[ClientRecipe] = None):
        self._client, self._recipe = client, recipe

    def get(self) -> Any:
        if self._client is None:
            self._client = self._recipe.build()
        return self._client

    def __reduce__(self):
        return (ClientRef, (None, self._recipe or ClientRecipe.of(self._client)))

    def __dask_tokenize__(self) -> tuple:
        c = self._client
        return ("pdbatch.ClientRef", type(c).__name__, str(getattr(c, "base_url", "")), self._recipe)


class BackendRef:
    """A backend object given to ``ddf.llm.map(backend=...)``, named in the graph without pickling it.

    Dask names a graph's tasks by hashing their arguments; a backend hashes as
    its class, provider and identity (its client, which need not pickle on a
    single machine, is left out). Pickled, the backend travels without its
    client's key (:mod:`pdbatch.backends.pickling`).
    """

    def __init__(self, backend: Any):
        self.backend = backend

    def __dask_tokenize__(self) -> tuple:
        b = self.backend
        return ("pdbatch.BackendRef", type(b).__name__, getattr(b, "provider", ""), id(b))


def _backend(options: Dict[str, Any]) -> Dict[str, Any]:
    """``options`` with the backend object itself in place of its :class:`BackendRef`."""
    ref = options.get("backend")
    return dict(options, backend=ref.backend) if isinstance(ref, BackendRef) else options


def check_home(home: str) -> None:
    """Raise :class:`JobError` unless this process's job store is ``home``, the one the graph was built with."""
    here = os.path.abspath(pdbatch_home())
    if here != home:
        raise JobError(
            f"this Dask worker (pid {os.getpid()}) keeps its jobs in {here!r}, but the graph was built where "
            f"PDBATCH_HOME is {home!r}; every worker must use the job store of the process that builds the graph, "
            f"or a re-run could pay again: set PDBATCH_HOME to the same shared directory on the workers (e.g. "
            f"LocalCluster(env={{'PDBATCH_HOME': {home!r}}})) and where you build the graph")


def _named(options: Dict[str, Any], template: str, info: Optional[dict]) -> Dict[str, Any]:
    """``options`` with the job's name saying which partition it runs (not part of the job's identity)."""
    number = (info or {}).get("number")
    if number is None:
        return options
    base = options.get("name") or default_name(template)
    return dict(options, name=f"{base} [partition {number}]")


def _client(ref: Optional[ClientRef]) -> Any:
    return ref.get() if ref is not None else None


def run_partition(part: Union[pd.DataFrame, pd.Series], _ids_checked: Any, *, method: str, template: str,
                  options: Dict[str, Any], client: Optional[ClientRef], result: Any, new: List[str], home: str,
                  caps: Optional[List[float]] = None, offline: Optional[Dict[str, str]] = None,
                  partition_info: Optional[dict] = None):
    """``part.llm.<method>(template, **options)`` (``map`` or ``embed``), made to agree with the Dask result's meta.

    ``caps``: each partition's ``max_cost`` (:mod:`pdbatch.scale.budget`), by
    partition number. ``offline``: the encodings the graph's builder could not
    load (not tried here either).
    """
    check_home(home)
    if not len(part):
        return result
    assume_unavailable(offline or {})
    if caps is not None:
        options = dict(options, max_cost=caps[(partition_info or {})["number"]])
    run = getattr(LLMAccessor(part), method)
    out = run(template, client=_client(client), **_named(_backend(options), template, partition_info))
    return conform(out, result, new)


def write_partition(part: Union[pd.DataFrame, pd.Series], _ids_checked: Any, *, directory: str, stem: str,
                    template: str, options: Dict[str, Any], partition_info: Optional[dict] = None) -> pd.Series:
    """``part.llm.to_batch_file(<directory>/<stem>-p<N>.jsonl, ...)``; the paths written, as a Series."""
    if not len(part):
        return pd.Series([], dtype=object)
    number = (partition_info or {}).get("number", 0)
    path = os.path.join(directory, f"{stem}-p{number:05d}.jsonl")
    written = LLMAccessor(part).to_batch_file(path, template, **options)
    return pd.Series(written, dtype=object)


def estimate_partition(part: Union[pd.DataFrame, pd.Series], _ids_checked: Any, template: str,
                       options: Dict[str, Any], client: Optional[ClientRef],
                       offline: Optional[Dict[str, str]] = None) -> dict:
    """``part.llm.estimate(template, show=False, **options)``, counting tokens as the caller's process does.

    ``offline``: the tiktoken encodings the caller could not load, and why
    (:func:`~pdbatch.pricing.tokens.unavailable_encodings`); this process
    takes the same fallback at once instead of trying to download them.
    """
    assume_unavailable(offline or {})
    return LLMAccessor(part).estimate(template, **dict(_backend(options), show=False, client=_client(client)))

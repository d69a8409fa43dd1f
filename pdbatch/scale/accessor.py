"""``ddf.llm``: the pandas accessor's methods on a Dask DataFrame or Series, one job per partition.

Every method takes the arguments of its pandas twin
(:class:`pdbatch.accessor.LLMAccessor`) and checks every one of them at the
call, on an empty pandas frame with the collection's columns and dtypes, the
way the pandas accessor checks them (the same code): a bad option raises at
``ddf.llm.map(...)``, never at compute. ``map`` and ``embed`` are lazy;
``estimate`` and ``to_batch_file`` compute at once, a partition at a time.
"""

from __future__ import annotations

import inspect
import os
import pickle
import sys
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from ..accessor import LLMAccessor
from ..backends.base import Backend
from ..core.records import EMBEDDINGS_URL
from ..errors import BackendUnavailableError, BudgetError, OptionError
from ..job.store import pdbatch_home
from ..options import RunOptions, check
from ..pricing.tokens import unavailable_encodings
from .ids import unique_ids_check
from .meta import empty_host, result_meta
from .budget import frame_caps, merge, partition_estimates
from .partition import BackendRef, ClientRef, run_partition, write_partition

__all__ = ["DaskAccessor"]

_SPEC = ("model", "system", "response_format", "images", "image_detail", "output", "error_column", "raw_column",
         "extra_body", "endpoint")
_JOB = ("overwrite", "cache", "max_retries", "retry_invalid", "name", "max_cost")
_SHORTCUTS = ("shard_size", "shard_bytes", "poll_interval", "max_poll_interval", "max_concurrency", "rpm", "tpm",
              "workers", "threads_per_worker")


def _bind(method: Any, *positional: Any, **options: Any) -> Dict[str, Any]:
    """Every argument of the pandas ``method`` (defaults filled, ``**params`` kept apart under ``params``)."""
    try:
        bound = inspect.signature(method).bind(None, *positional, **options)
    except TypeError as err:  # as the pandas method would refuse it, named as ddf.llm's
        raise OptionError(f"ddf.llm.{method.__name__}(): {err}; see help(pd.DataFrame.llm.{method.__name__}) for "
                          f"the arguments") from None
    bound.apply_defaults()
    args = dict(bound.arguments)
    args.pop("self")
    args.setdefault("params", {})
    return args


def _flat(args: Dict[str, Any], drop: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """``args`` as keyword arguments of the pandas method again (``params`` spread out)."""
    out = {k: v for k, v in args.items() if k not in ("template", "params", *drop)}
    out.update(args["params"])
    return out


def _on_cluster() -> bool:
    """Whether a ``dask.distributed`` client is the default scheduler (then the graph will be pickled)."""
    if "distributed" not in sys.modules:
        return False
    from distributed import default_client

    try:
        default_client()
    except ValueError:
        return False
    return True


class DaskAccessor:
    """LLM enrichment for a Dask DataFrame or Series: ``ddf.llm.map(...)``, one pdbatch job per partition.

    Parameters
    ----------
    obj : dask.dataframe.DataFrame or Series
        The host. Any other object raises ``AttributeError``.

    Notes
    -----
    * Each partition runs as an ordinary job through the pandas path; its
      custom_ids are its index labels, which must be unique across the
      collection (see :mod:`pdbatch.scale.ids` for what is checked where).
    * Every worker must use the job store of the process that builds the
      graph (``PDBATCH_HOME``; a shared directory on a cluster of several
      machines); a task whose ``PDBATCH_HOME`` differs refuses to run.
    * Clients never travel with their API key (see
      :mod:`pdbatch.backends.pickling`).
    """

    def __init__(self, obj: Any):
        import dask.dataframe as dd

        if not isinstance(obj, (dd.DataFrame, dd.Series)):
            raise AttributeError("the .llm accessor works on a Dask DataFrame or Series")
        self._obj = obj

    # ------------------------------------------------------------- internals
    @property
    def _series(self) -> bool:
        import dask.dataframe as dd

        return isinstance(self._obj, dd.Series)

    def _host(self):
        """An empty pandas host with the collection's columns, dtypes and index."""
        o = self._obj
        if self._series:
            return empty_host(o.dtype, o.index.dtype, o.index.name, series_name=o.name, series=True)
        return empty_host(o.dtypes, o.index.dtype, o.index.name)

    def _check_run(self, method: str, args: Dict[str, Any], progress_given: bool) -> None:
        if args.get("wait") is not True:
            raise OptionError(f"wait={args.get('wait')!r}: ddf.llm.{method} is lazy already and waits for each "
                              f"partition's job when the result is computed; drop wait=")
        if method == "embed" and args.get("max_cost") is not None:
            raise OptionError("max_cost= is offered on ddf.llm.map, not on ddf.llm.embed (each partition runs as a job "
                              "of its own, and embeddings have no whole-collection cap yet); drop max_cost=")
        RunOptions(args["wait"], args["progress"], args["timeout"])
        if not progress_given:  # bars drawn by every worker at once help nobody; Dask's dashboard shows progress
            args["progress"] = False

    def _plan(self, template: str, args: Dict[str, Any], spec_args: Dict[str, Any], job_args: Dict[str, Any],
              shortcuts: Dict[str, Any], url: Optional[str] = None):
        host = self._host()
        spec, _job, be = LLMAccessor(host)._plan(template, spec_args, job_args, args["backend"], args["client"],
                                                 shortcuts, url=url)
        return host, spec, be

    @staticmethod
    def _for_workers(args: Dict[str, Any], be: Backend) -> Tuple[Any, Optional[ClientRef]]:
        """The backend and client as the partitions get them: picklable, no API key inside."""
        backend, client = args["backend"], args["client"]
        if backend is None or isinstance(backend, str):
            backend = be.name  # the backend chosen here, not one each worker would choose from its environment
        else:
            backend = BackendRef(backend)
        ref = ClientRef(client) if client is not None else None
        if _on_cluster():  # the graph will be pickled: refuse now what could not be
            pickle.dumps((backend, ref))
        return backend, ref

    def _lazy(self, method: str, template: str, args: Dict[str, Any], host: Any, spec: Any, be: Backend,
              meta: Any, token: str, ids: Any = None, caps: Optional[List[float]] = None):
        backend, ref = self._for_workers(args, be)
        if meta is not None:
            from dask.dataframe.utils import make_meta

            result = make_meta(meta)
            new = [c for c in (result.columns if isinstance(result, pd.DataFrame) else [result.name])
                   if self._series or c not in host.columns or c in spec.new_columns()]
        else:
            result, new = result_meta(host, spec), spec.new_columns()
        options = dict(_flat(args, drop=("client",)), backend=backend)
        return self._obj.map_partitions(
            run_partition, unique_ids_check(self._obj) if ids is None else ids, method=method, template=template,
            options=options, client=ref, result=result, new=list(new), home=os.path.abspath(pdbatch_home()),
            caps=caps, offline=unavailable_encodings(), meta=result, token=token)

    # -------------------------------------------------------------------- API
    def map(self, template: str, *, meta: Any = None, **options: Any):
        """Lazily enrich every row with an LLM answer: :meth:`pdbatch.accessor.LLMAccessor.map` per partition.

        Takes the arguments of the pandas ``map`` (``help(pd.DataFrame.llm.map)``),
        checked here, plus ``meta``. Nothing is rendered or sent until the
        result is computed; then each partition runs as one job and waits for it.

        Parameters
        ----------
        meta : optional
            The result's columns and dtypes, as Dask's ``meta=`` (a dict of
            column -> dtype, a frame...). Needed for ``response_format="json"``
            only; otherwise derived from the arguments (see :mod:`pdbatch.scale.meta`).
        **options
            As for the pandas ``map``; but ``wait=False`` (the result is lazy)
            is refused, and ``progress`` defaults to False. ``max_cost=`` caps
            the whole collection: the call estimates every partition at once
            (reading and rendering the data, sending nothing), refuses with
            :class:`~pdbatch.errors.BudgetError` when the estimate is over it,
            and gives each partition a share of it; see
            :mod:`pdbatch.scale.budget` for what is guaranteed.

        Returns
        -------
        dask.dataframe.DataFrame or Series
        """
        args = _bind(LLMAccessor.map, template, **options)
        self._check_run("map", args, "progress" in options)
        spec_args = {k: args[k] for k in _SPEC}
        spec_args["params"] = args["params"]
        host, spec, be = self._plan(template, args, spec_args, {k: args[k] for k in _JOB},
                                    {k: args[k] for k in _SHORTCUTS})
        ids, caps = unique_ids_check(self._obj), None
        if args["max_cost"] is not None:
            work = dict(_flat(args), backend=self._for_workers(args, be)[0])
            caps = frame_caps(self._obj, ids, template, work, args["max_cost"], be, spec.params.get("service_tier"))
        return self._lazy("map", template, args, host, spec, be, meta, "pdbatch-map", ids=ids, caps=caps)

    def embed(self, template: str, *, meta: Any = None, **options: Any):
        """Lazily embed every row's text: :meth:`pdbatch.accessor.LLMAccessor.embed` per partition.

        Takes the arguments of the pandas ``embed``, checked here (``wait``
        and ``progress`` as for :meth:`map`; ``max_cost`` is refused).

        Returns
        -------
        dask.dataframe.DataFrame or Series
        """
        args = _bind(LLMAccessor.embed, template, **options)
        self._check_run("embed", args, "progress" in options)
        params = {k: args[k] for k in ("dimensions", "encoding_format", "user") if args[k] is not None}
        spec_args = dict(model=args["model"], output=args["output"], error_column=args["error_column"], params=params)
        job_args = {k: args[k] for k in ("overwrite", "cache", "max_retries", "name", "max_cost")}
        host, spec, be = self._plan(template, args, spec_args, job_args, {k: args[k] for k in _SHORTCUTS[:7]},
                                    url=EMBEDDINGS_URL)
        return self._lazy("embed", template, args, host, spec, be, meta, "pdbatch-embed")

    def to_batch_file(self, path: Any, template: str, **options: Any) -> List[str]:
        """Write the Batch API input JSONL of every partition, a partition at a time; return the paths.

        Takes the arguments of the pandas ``to_batch_file``. Partition ``N``
        writes ``<stem>-pNNNNN.jsonl`` next to ``path`` (shards of it as
        ``<stem>-pNNNNN-0000.jsonl``... when over ``shard_size`` /
        ``shard_bytes``) through the pandas path, so a worker holds one
        partition's lines at most. Computes at once; the directory must be
        reachable from every worker.

        Returns
        -------
        list of str
            The paths written, in partition order.
        """
        args = _bind(LLMAccessor.to_batch_file, path, template, **options)
        path = os.fspath(args.pop("path"))
        check("shard_size", args["shard_size"])
        check("shard_bytes", args["shard_bytes"])
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise OptionError(f"path: the directory {directory!r} does not exist; create it first")
        spec_args = {k: args[k] for k in ("model", "system", "response_format", "images", "image_detail",
                                          "extra_body", "endpoint")}
        spec = LLMAccessor(self._host())._build_spec(template, params=args["params"], **spec_args)
        if spec.model is None:
            raise OptionError("model= is required to write a batch file, e.g. model='gpt-4o-mini'")
        stem = os.path.splitext(os.path.basename(path))[0]
        written = self._obj.map_partitions(
            write_partition, unique_ids_check(self._obj), directory=directory, stem=stem, template=template,
            options=_flat(args), meta=pd.Series([], dtype=object), token="pdbatch-to-batch-file")
        return list(written.compute())

    def estimate(self, template: str, **options: Any) -> dict:
        """Count and price what :meth:`map` would send, over every partition; send nothing.

        Takes the arguments of the pandas ``estimate`` (checked here); each
        partition is estimated through the pandas path and the figures are
        added up (``max_cost`` is checked against the total). Computes at once.

        Returns
        -------
        dict
            As the pandas ``estimate``, plus ``partitions``.
        """
        args = _bind(LLMAccessor.estimate, template, **options)
        show = check("show", args.pop("show"))
        flat = _flat(args)
        LLMAccessor(self._host()).estimate(template, show=False, **flat)  # every check, on no rows
        given = args["backend"]
        work = dict(flat, backend=given if given is None or isinstance(given, str) else BackendRef(given))
        ests = partition_estimates(self._obj, unique_ids_check(self._obj), template, work)
        est = merge(ests, len(ests))
        if args["max_cost"] is not None:
            est["max_cost"], est["max_cost_refusal"] = args["max_cost"], _refusal(est, args)
        if show:  # the summary is what show=True asks for, as the pandas estimate writes it
            sys.stdout.write(est["summary"] + "\n")
        return est


def _refusal(est: dict, args: Dict[str, Any]) -> Optional[str]:
    """Why ``map`` with ``max_cost`` would refuse the whole collection's estimate, or None."""
    from ..backends import choose_backend
    from ..pricing.budget import check_estimate

    try:
        name = choose_backend(args["backend"], args["client"])
    except BackendUnavailableError:
        name = "batch"
    try:
        check_estimate(est, args["max_cost"], name, args["params"].get("service_tier"))
    except BudgetError as err:
        return str(err)
    return None

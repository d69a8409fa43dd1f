"""``DataFrame.llm`` / ``Series.llm``: check the host, check arguments, delegate, wrap.

The accessor keeps no state beyond its host (pandas builds a new accessor
object on every ``df.llm`` access); jobs live in :class:`~pdbatch.job.Job`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import pandas as pd

from .backends import resolve_backend
from .batchfile import MAX_BYTES, MAX_REQUESTS, read_answers, write_lines
from .errors import OptionError
from .ids import unique_ids
from .job import Job, start_job
from .records import EMBEDDINGS_URL
from .spec import MapSpec

__all__ = ["LLMAccessor"]

_JOB_OPTIONS = frozenset(
    "shard_size shard_bytes poll_interval max_poll_interval workers threads_per_worker cache max_retries "
    "retry_invalid max_concurrency rpm tpm".split()
)
_SPEC_ARGS = frozenset(
    "model system response_format images image_detail output error_column extra_body".split()
)


class LLMAccessor:
    """LLM enrichment for a DataFrame or Series: ``df.llm.map(...)``.

    Parameters
    ----------
    obj : DataFrame or Series
        The host. Any other object raises ``AttributeError``.
    """

    def __init__(self, obj: Any):
        if not isinstance(obj, (pd.DataFrame, pd.Series)):
            raise AttributeError("the .llm accessor works on a pandas DataFrame or Series")
        self._obj = obj

    # ------------------------------------------------------------- internals
    @property
    def _series(self) -> bool:
        return isinstance(self._obj, pd.Series)

    def _columns(self) -> List[Any]:
        return ["value"] if self._series else list(self._obj.columns)

    def _spec(self, template: str, **kw: Any) -> MapSpec:
        """Build the spec; keywords that are not spec arguments are body parameters."""
        params = dict(kw.pop("params", None) or {})
        for key in list(kw):
            if key not in _SPEC_ARGS:
                params[key] = kw.pop(key)
        return MapSpec.build(template, columns=self._columns(), series=self._series, params=params, **kw)

    # -------------------------------------------------------------------- API
    def submit(
        self,
        template: str,
        *,
        model: Optional[str] = None,
        system: Optional[str] = None,
        response_format: Any = None,
        images: Optional[str] = None,
        image_detail: Optional[str] = None,
        output: str = "llm_output",
        error_column: Optional[str] = "llm_error",
        overwrite: bool = False,
        client: Any = None,
        backend: Any = None,
        shard_size: Optional[int] = None,
        shard_bytes: Optional[int] = None,
        poll_interval: Optional[float] = None,
        max_poll_interval: Optional[float] = None,
        workers: Optional[int] = None,
        threads_per_worker: Optional[int] = None,
        extra_body: Optional[dict] = None,
        cache: bool = True,
        max_retries: int = 2,
        retry_invalid: int = 0,
        max_concurrency: Optional[int] = None,
        rpm: Optional[int] = None,
        tpm: Optional[int] = None,
        **params: Any,
    ) -> Job:
        """Render every row into a request and start the job; return the :class:`Job`.

        Takes the same arguments as :meth:`map` except ``wait``. Everything is
        checked before anything is sent.
        """
        spec = self._spec(
            template,
            model=model,
            system=system,
            response_format=response_format,
            images=images,
            image_detail=image_detail,
            output=output,
            error_column=error_column,
            extra_body=extra_body,
            params=params,
        )
        return self._start(
            spec, overwrite=overwrite, client=client, backend=backend, shard_size=shard_size,
            shard_bytes=shard_bytes, poll_interval=poll_interval, max_poll_interval=max_poll_interval,
            workers=workers, threads_per_worker=threads_per_worker, cache=cache, max_retries=max_retries,
            retry_invalid=retry_invalid, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm,
        )

    def _start(
        self,
        spec: MapSpec,
        *,
        overwrite: bool = False,
        client: Any = None,
        backend: Any = None,
        cache: bool = True,
        max_retries: int = 2,
        retry_invalid: int = 0,
        **backend_options: Any,
    ) -> Job:
        """Check the job options, pick the backend and start the job (``submit`` and ``embed``).

        ``backend_options`` are the backends' own (``shard_size``, ``workers``,
        ``max_concurrency``...); each backend takes its own and ignores None.
        """
        if not isinstance(overwrite, bool):
            raise OptionError(f"overwrite must be True or False, got {overwrite!r}")
        for name, value in (("max_retries", max_retries), ("retry_invalid", retry_invalid)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise OptionError(f"{name} must be a whole number >= 0, got {value!r}")
        be = resolve_backend(backend, client, **backend_options)
        if spec.model is None and be.name in ("batch", "realtime"):
            raise OptionError("model= is required for the Batch API, e.g. model='gpt-4o-mini'")
        if spec.embeddings and not be.supports_embeddings:
            from .errors import BackendUnavailableError

            raise BackendUnavailableError(
                f"the {be.name!r} backend cannot embed; use backend='batch' or backend='realtime' with a client "
                f"or OPENAI_API_KEY"
            )
        return start_job(self._obj, spec, be, overwrite=overwrite, cache=bool(cache), max_retries=max_retries,
                         retry_invalid=retry_invalid)

    def map(
        self,
        template: str,
        *,
        wait: bool = True,
        progress: bool = True,
        timeout: Optional[float] = None,
        **options: Any,
    ) -> Union[pd.DataFrame, pd.Series, Job]:
        """Enrich every row with an LLM answer; return a new object with the answers.

        Parameters
        ----------
        template : str
            A :meth:`str.format` template whose fields name columns, e.g.
            ``"Title: {Series_Title}\\n{Overview}"``; ``{{`` / ``}}`` are literal
            braces. On a Series the value is ``{}`` or ``{value}``.
        model : str
            Model name, e.g. ``"gpt-4o-mini"`` (a ``.gguf`` path on the local backend).
        system : str, optional
            System message; may itself be a template.
        response_format : None, "json", dict or pydantic model class
            Text (default), JSON mode, a JSON Schema (strict structured output,
            validated), or a pydantic ``BaseModel`` subclass. JSON answers
            expand into one column per top-level key.
        images : str, optional
            A column name, or a template, giving image URLs or local paths
            (a cell may hold a list); local files are sent as ``data:`` URLs.
        image_detail : {"auto", "low", "high"}, optional
        output : str
            Column for text answers.
        error_column : str or None
            Column holding None where the row succeeded, else a short reason.
        overwrite : bool
            Replace new columns that already exist instead of raising.
        client : openai.OpenAI, optional
            Default: ``OpenAI()`` from the environment.
        backend : {"batch", "local"} or None
            None picks ``"batch"`` with a client or ``OPENAI_API_KEY``, else ``"local"``.
        wait : bool
            False returns the :class:`Job` at once.
        progress : bool
            Show a progress bar while waiting.
        timeout : float, optional
            Seconds to wait at most (the job keeps running after).
        shard_size, shard_bytes : int, optional
            Batch input-file limits (default 50,000 requests, 200 MB).
        poll_interval, max_poll_interval : float, optional
            First and longest pause between polls (default 2 s growing to 60 s).
        workers, threads_per_worker : int, optional
            Local backend: model instances run in parallel, and CPU threads each
            (default one single-threaded instance per core, at most four).
        extra_body : dict, optional
            Provider-specific fields merged into every request body.
        cache : bool
            Serve rows whose exact request was answered before (by any job)
            from the job store, and reuse a finished identical job (default
            True). A job in flight is always re-attached, never paid twice.
        max_retries : int
            Rounds of resubmitting rows that failed for a retryable reason
            (``batch_expired``, 429, 5xx, ``server_error``); default 2.
        retry_invalid : int
            Rounds of resubmitting rows whose answer is not valid JSON or fails
            the schema; default 0.
        **params
            Chat Completions parameters copied into each body
            (``temperature``, ``max_completion_tokens``, ``seed``...).

        Returns
        -------
        DataFrame, Series or Job
            The original columns and index plus the new columns;
            ``attrs["pdbatch"]`` holds the summary.

        Examples
        --------
        >>> import pandas as pd, pdbatch
        >>> from pdbatch.server import BatchServer
        >>> with BatchServer() as srv:
        ...     df = pd.DataFrame({"city": ["Paris", "Lima"]}, index=["fr", "pe"])
        ...     out = df.llm.map("Country of {city}?", model="gpt-4o-mini", client=srv.client(),
        ...                      poll_interval=0.05, progress=False)
        >>> out["llm_output"].tolist()
        ['Country of Paris?', 'Country of Lima?']
        >>> out.attrs["pdbatch"]["counts"]["succeeded"]
        2
        """
        job = self.submit(template, **options)
        if not wait:
            return job
        return job.wait(progress=progress, timeout=timeout).result()

    def embed(
        self,
        template: str,
        *,
        model: str = "text-embedding-3-small",
        dimensions: Optional[int] = None,
        output: str = "embedding",
        error_column: Optional[str] = "llm_error",
        backend: Any = None,
        client: Any = None,
        wait: bool = True,
        progress: bool = True,
        timeout: Optional[float] = None,
        overwrite: bool = False,
        **options: Any,
    ):
        """Embed every row's rendered text; one float32 vector per row.

        Same custom_id, cache, resume and error-cell rules as :meth:`map`;
        runs on the ``"batch"`` (one input per request, so a batch's
        50,000-request limit is also the 50,000-input limit) or
        ``"realtime"`` backend.

        Parameters
        ----------
        template : str
            As for :meth:`map`.
        model : str
            An embeddings model.
        dimensions : int, optional
            Shorter vectors, for models that support it.
        output : str
            The column of vectors: a float32 NumPy array per row in an object
            column (``np.stack(out[output])`` gives the matrix; ``to_parquet``
            stores it as a list column).
        **options
            ``shard_size``, ``poll_interval``, ``max_concurrency``, ``cache``... as for :meth:`map`.

        Returns
        -------
        DataFrame, Series or Job

        Examples
        --------
        >>> from pdbatch.server import BatchServer
        >>> with BatchServer() as srv:
        ...     out = pd.DataFrame({"t": ["a cat", "a dog"]}).llm.embed(
        ...         "{t}", dimensions=4, client=srv.client(), poll_interval=0.05, progress=False)
        >>> out["embedding"][0].dtype, out["embedding"][0].shape
        (dtype('float32'), (4,))
        """
        for bad in ("system", "images", "response_format"):
            if bad in options:
                raise OptionError(f"embed() takes no {bad}=; it embeds the rendered template only")
        params = {"dimensions": dimensions} if dimensions is not None else {}
        params.update({k: options.pop(k) for k in list(options) if k in ("encoding_format", "user")})
        unknown = sorted(set(options) - _JOB_OPTIONS)
        if unknown:
            raise OptionError(f"embed() got unknown option(s) {', '.join(map(repr, unknown))}; it takes "
                              f"{', '.join(sorted(_JOB_OPTIONS | {'dimensions', 'encoding_format', 'user'}))}")
        spec = MapSpec.build(template, columns=self._columns(), series=self._series, model=model, output=output,
                             error_column=error_column, params=params, url=EMBEDDINGS_URL)
        job = self._start(spec, backend=backend, client=client, overwrite=overwrite, **options)
        if not wait:
            return job
        return job.wait(progress=progress, timeout=timeout).result()

    def to_batch_file(self, path: Union[str, os.PathLike], template: str, **options: Any) -> List[str]:
        """Write the Batch API input JSONL for this frame without sending anything.

        Takes the same arguments as :meth:`map` (``model`` is required).
        Rows with missing values are left out, as ``map`` would. When the
        requests exceed one file's limits, shards are written next to ``path``
        as ``<stem>-0000.jsonl``, ``<stem>-0001.jsonl``...

        Returns
        -------
        list of str
            The paths written.
        """
        path = os.fspath(path)
        shard_size = options.pop("shard_size", None) or MAX_REQUESTS
        shard_bytes = options.pop("shard_bytes", None) or MAX_BYTES
        for unused in ("client", "backend", "wait", "overwrite", "poll_interval", "max_poll_interval", "progress",
                       "cache", "max_retries", "retry_invalid", "max_concurrency", "rpm", "tpm",
                       "workers", "threads_per_worker"):
            options.pop(unused, None)
        spec = self._spec(template, **options)
        if spec.model is None:
            raise OptionError("model= is required to write a batch file, e.g. model='gpt-4o-mini'")
        ids = unique_ids(self._obj.index)
        frame = self._obj.to_frame(name="value") if self._series else self._obj
        rendered = spec.render(frame, ids)
        directory = os.path.dirname(os.path.abspath(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        too_large: Dict[str, str] = {}
        shards = write_lines(spec.lines(rendered), directory, prefix=stem, max_requests=shard_size,
                             max_bytes=shard_bytes, too_large=too_large)
        if too_large:
            first = ", ".join(repr(c) for c in list(too_large)[:5])
            warnings.warn(f"{len(too_large)} request(s) left out of the batch file, each larger than shard_bytes="
                          f"{shard_bytes} on its own (custom_id {first}{', ...' if len(too_large) > 5 else ''}); "
                          f"shorten those rows or raise shard_bytes=", stacklevel=2)
        if len(shards) == 1:
            os.replace(shards[0].path, path)
            return [path]
        return [s.path for s in shards]

    def read_results(self, paths: Union[str, Sequence[str]], template: Optional[str] = None, **options: Any):
        """Join downloaded Batch API output and error files back onto this frame.

        Parameters
        ----------
        paths : str or list of str
            Output and error JSONL files, in any order.
        template : str, optional
            The template used to build the requests; given, rows that were not
            sent carry the same reason ``map`` would give (missing value...).
        **options
            The ``map`` arguments that shape the result: ``response_format``,
            ``output``, ``error_column``, ``overwrite`` (others are ignored).

        Returns
        -------
        DataFrame or Series
        """
        overwrite = bool(options.pop("overwrite", False))
        keep = {k: options[k] for k in ("response_format", "output", "error_column", "system", "images") if k in options}
        spec = self._spec(template if template is not None else "", **keep)
        ids = unique_ids(self._obj.index)
        skipped = {}
        if template is not None:
            frame = self._obj.to_frame(name="value") if self._series else self._obj
            skipped = spec.render(frame, ids).skipped
        out, stats, _errors = spec.join(self._obj, ids, read_answers(paths, "embedding" if spec.embeddings else "chat"),
                                        skipped=skipped, overwrite=overwrite)
        out.attrs = dict(out.attrs)
        out.attrs["pdbatch"] = {"counts": stats.to_dict(), "usage": stats.usage.to_dict()}
        return out

    def estimate(self, template: str, *, show: bool = True, **options: Any) -> dict:
        """Count and price what :meth:`map` would send, without sending anything.

        Renders the requests exactly as ``map`` would (same checks, same
        skipped rows, same answer-cache lookup with ``cache=True``); no job is
        created and nothing is uploaded. See :mod:`pdbatch.pricing` for the
        price table, its date and how to override it, and for how tokens are
        counted (tiktoken when its encoding loads, else ~4 characters per token).

        Parameters
        ----------
        template : str
            As for :meth:`map`.
        show : bool
            Print the one-paragraph summary (default True).
        **options
            The arguments of :meth:`map`; unknown ones raise as they would there.

        Returns
        -------
        dict
            ``rows``, ``requests`` (to send), ``cached``, ``skipped``,
            ``skip_reasons``, ``input_tokens``, ``images``, ``output_tokens``
            (the ``max_completion_tokens`` cap, else None), ``tokenizer``,
            ``cost_batch`` / ``cost_realtime`` (None for a model without a
            price) and ``summary``.

        Examples
        --------
        >>> import pandas as pd, pdbatch
        >>> df = pd.DataFrame({"city": ["Paris", None, "Lima"]})
        >>> est = df.llm.estimate("Country of {city}?", model="gpt-4o-mini", max_completion_tokens=5, show=False)
        >>> est["rows"], est["requests"], est["skipped"], est["output_tokens"]
        (3, 2, 1, 10)
        """
        import inspect

        from .pricing import estimate_requests
        from .store import default_store, store_path

        run_opts = {name for name, p in inspect.signature(self.submit).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and name not in _SPEC_ARGS} | {"wait", "progress", "timeout"}
        runtime = {k: options.pop(k) for k in list(options) if k in run_opts}
        overwrite = runtime.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise OptionError(f"overwrite must be True or False, got {overwrite!r}")
        spec = self._spec(template, **options)
        ids = unique_ids(self._obj.index)
        if not self._series:
            spec.check_collisions(self._obj.columns, overwrite)
        frame = self._obj.to_frame(name="value") if self._series else self._obj
        rendered = spec.render(frame, ids)
        store = default_store() if runtime.get("cache", True) and os.path.exists(store_path()) else None
        est = estimate_requests(spec.requests(rendered), model=spec.model, rows=len(ids),
                                skipped=rendered.skipped, store=store)
        if show:
            print(est["summary"])
        return est

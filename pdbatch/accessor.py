"""``DataFrame.llm`` / ``Series.llm``: check the host, check every option, delegate, wrap.

The accessor keeps no state beyond its host (pandas builds a new accessor
object on every ``df.llm`` access); jobs live in :class:`~pdbatch.job.Job`.
Every option is checked before anything is rendered (:mod:`pdbatch.options`,
:meth:`pdbatch.core.spec.MapSpec.build`, :func:`pdbatch.backends.resolve_backend`);
the frame is checked against the spec before anything is sent.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import pandas as pd

from .backends import choose_backend, resolve_backend
from .core.batchfile import MAX_BYTES, MAX_REQUESTS, read_answers, write_lines
from .core.ids import unique_ids
from .core.records import EMBEDDINGS_URL
from .core.spec import MapSpec
from .errors import BackendUnavailableError, OptionError
from .job import Job, start_job
from .options import JobOptions, RunOptions, check, check_owner

__all__ = ["LLMAccessor"]


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

    def _frame(self) -> pd.DataFrame:
        return self._obj.to_frame(name="value") if self._series else self._obj

    def _build_spec(self, template: str, *, url: Optional[str] = None, **args: Any) -> MapSpec:
        """The checked spec of a call, checked against this host's columns too."""
        columns = ["value"] if self._series else list(self._obj.columns)
        if url is not None:
            args["url"] = url
        return MapSpec.build(template, columns=columns, series=self._series, **args)

    def _check_new_columns(self, spec: MapSpec, overwrite: bool) -> None:
        if not self._series:
            spec.check_collisions(self._obj.columns, overwrite)

    def _plan(self, template: str, spec_args: Dict[str, Any], job_args: Dict[str, Any], backend: Any,
              client: Any, shortcuts: Dict[str, Any], url: Optional[str] = None):
        """Check everything a run needs, in order, before anything is rendered or sent."""
        job = JobOptions(**job_args)
        spec = self._build_spec(template, url=url, **spec_args)
        self._check_new_columns(spec, job.overwrite)
        be = resolve_backend(backend, client, **shortcuts)
        if spec.model is None and be.name in ("batch", "realtime"):
            raise OptionError(f"model= is required for backend={be.name!r}, e.g. model='gpt-4o-mini'")
        if spec.embeddings and not be.supports_embeddings:
            raise BackendUnavailableError(
                f"the {be.name!r} backend cannot embed; use backend='batch' or backend='realtime' with a client "
                f"or OPENAI_API_KEY")
        if spec.images is not None and not be.supports_vision:
            raise BackendUnavailableError(
                f"images= needs a vision model, which the {be.name!r} backend does not have; "
                f"use backend='batch' with a vision model such as gpt-4o-mini")
        return spec, job, be

    def _finish(self, job: Job, run: RunOptions):
        if not run.wait:
            return job
        return job.wait(progress=run.progress, timeout=run.timeout).result()

    # -------------------------------------------------------------------- API
    def map(
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
        backend: Any = None,
        client: Any = None,
        cache: bool = True,
        max_retries: int = 2,
        retry_invalid: int = 0,
        wait: bool = True,
        progress: bool = True,
        timeout: Optional[float] = None,
        shard_size: Optional[int] = None,
        shard_bytes: Optional[int] = None,
        poll_interval: Optional[float] = None,
        max_poll_interval: Optional[float] = None,
        max_concurrency: Optional[int] = None,
        rpm: Optional[float] = None,
        tpm: Optional[float] = None,
        workers: Optional[int] = None,
        threads_per_worker: Optional[int] = None,
        extra_body: Optional[dict] = None,
        **params: Any,
    ) -> Union[pd.DataFrame, pd.Series, Job]:
        """Enrich every row with an LLM answer; return a new object with the answers.

        Every argument is checked before anything is rendered or sent.

        Parameters
        ----------
        template : str
            A :meth:`str.format` template whose fields name columns, e.g.
            ``"Title: {Series_Title}\\n{Overview}"``; ``{{`` / ``}}`` are literal
            braces. On a Series the value is ``{}`` or ``{value}``.
        model : str
            Model name, e.g. ``"gpt-4o-mini"`` (required for the batch and
            realtime backends).
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
            Must differ from ``output`` and from the schema's keys.
        overwrite : bool
            Replace new columns that already exist instead of raising.
        backend : {"batch", "realtime", "local"}, a backend object, or None
            ``pdbatch.Batch(...)``, ``pdbatch.Realtime(...)`` or
            ``pdbatch.Local(...)`` carry their own options. None picks
            ``"batch"`` with a client or ``OPENAI_API_KEY``, else ``"local"``.
        client : openai.OpenAI, optional
            For the batch and realtime backends; default ``OpenAI()`` from the environment.
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
        wait : bool
            False returns the :class:`Job` at once.
        progress : bool
            Show a progress bar while waiting.
        timeout : float, optional
            Seconds to wait at most (the job keeps running after).
        shard_size, shard_bytes, poll_interval, max_poll_interval : optional
            Shortcuts for :class:`pdbatch.Batch` options (batch backend only).
        max_concurrency, rpm, tpm : optional
            Shortcuts for :class:`pdbatch.Realtime` options (realtime backend only).
        workers, threads_per_worker : int, optional
            Shortcuts for :class:`pdbatch.Local` options (local backend only).
        extra_body : dict, optional
            Provider-specific fields merged into every request body.
        **params
            Chat Completions body parameters copied into each body
            (``temperature``, ``max_completion_tokens``, ``seed``...); an
            unknown name raises, suggesting the closest one.

        Returns
        -------
        DataFrame, Series or Job
            The original columns and index plus the new columns;
            ``attrs["pdbatch"]`` holds the summary.

        Raises
        ------
        pdbatch.errors.OptionError
            For a bad value, or an option the chosen backend does not take,
            before anything is rendered.

        Examples
        --------
        >>> import pandas as pd, pdbatch
        >>> from pdbatch.server import BatchServer
        >>> with BatchServer() as srv:
        ...     df = pd.DataFrame({"city": ["Paris", "Lima"]}, index=["fr", "pe"])
        ...     out = df.llm.map("Country of {city}?", model="gpt-4o-mini",
        ...                      backend=pdbatch.Batch(srv.client(), poll_interval=0.05), progress=False)
        >>> out["llm_output"].tolist()
        ['Country of Paris?', 'Country of Lima?']
        >>> out.attrs["pdbatch"]["counts"]["succeeded"]
        2
        """
        run = RunOptions(wait, progress, timeout)
        job = self.submit(
            template, model=model, system=system, response_format=response_format, images=images,
            image_detail=image_detail, output=output, error_column=error_column, overwrite=overwrite,
            backend=backend, client=client, cache=cache, max_retries=max_retries, retry_invalid=retry_invalid,
            shard_size=shard_size, shard_bytes=shard_bytes, poll_interval=poll_interval,
            max_poll_interval=max_poll_interval, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm,
            workers=workers, threads_per_worker=threads_per_worker, extra_body=extra_body, **params)
        return self._finish(job, run)

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
        backend: Any = None,
        client: Any = None,
        cache: bool = True,
        max_retries: int = 2,
        retry_invalid: int = 0,
        shard_size: Optional[int] = None,
        shard_bytes: Optional[int] = None,
        poll_interval: Optional[float] = None,
        max_poll_interval: Optional[float] = None,
        max_concurrency: Optional[int] = None,
        rpm: Optional[float] = None,
        tpm: Optional[float] = None,
        workers: Optional[int] = None,
        threads_per_worker: Optional[int] = None,
        extra_body: Optional[dict] = None,
        **params: Any,
    ) -> Job:
        """Render every row into a request and start the job; return the :class:`Job`.

        Takes the arguments of :meth:`map` but ``wait``, ``progress`` and
        ``timeout``. Everything is checked before anything is sent.
        """
        spec, job_opts, be = self._plan(
            template,
            dict(model=model, system=system, response_format=response_format, images=images,
                 image_detail=image_detail, output=output, error_column=error_column, extra_body=extra_body,
                 params=params),
            dict(overwrite=overwrite, cache=cache, max_retries=max_retries, retry_invalid=retry_invalid),
            backend, client,
            dict(shard_size=shard_size, shard_bytes=shard_bytes, poll_interval=poll_interval,
                 max_poll_interval=max_poll_interval, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm,
                 workers=workers, threads_per_worker=threads_per_worker))
        return start_job(self._obj, spec, be, job_opts)

    def embed(
        self,
        template: str,
        *,
        model: str = "text-embedding-3-small",
        dimensions: Optional[int] = None,
        encoding_format: Optional[str] = None,
        user: Optional[str] = None,
        output: str = "embedding",
        error_column: Optional[str] = "llm_error",
        overwrite: bool = False,
        backend: Any = None,
        client: Any = None,
        cache: bool = True,
        max_retries: int = 2,
        wait: bool = True,
        progress: bool = True,
        timeout: Optional[float] = None,
        shard_size: Optional[int] = None,
        shard_bytes: Optional[int] = None,
        poll_interval: Optional[float] = None,
        max_poll_interval: Optional[float] = None,
        max_concurrency: Optional[int] = None,
        rpm: Optional[float] = None,
        tpm: Optional[float] = None,
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
        encoding_format, user : str, optional
            Embeddings body parameters.
        output : str
            The column of vectors: a float32 NumPy array per row in an object
            column (``np.stack(out[output])`` gives the matrix; ``to_parquet``
            stores it as a list column).
        error_column, overwrite, backend, client, cache, max_retries, wait, progress, timeout
            As for :meth:`map`.
        shard_size, shard_bytes, poll_interval, max_poll_interval, max_concurrency, rpm, tpm
            Backend shortcuts, as for :meth:`map`.

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
        run = RunOptions(wait, progress, timeout)
        params = {k: v for k, v in (("dimensions", dimensions), ("encoding_format", encoding_format),
                                    ("user", user)) if v is not None}
        spec, job_opts, be = self._plan(
            template, dict(model=model, output=output, error_column=error_column, params=params),
            dict(overwrite=overwrite, cache=cache, max_retries=max_retries), backend, client,
            dict(shard_size=shard_size, shard_bytes=shard_bytes, poll_interval=poll_interval,
                 max_poll_interval=max_poll_interval, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm),
            url=EMBEDDINGS_URL)
        return self._finish(start_job(self._obj, spec, be, job_opts), run)

    def to_batch_file(
        self,
        path: Union[str, os.PathLike],
        template: str,
        *,
        model: Optional[str] = None,
        system: Optional[str] = None,
        response_format: Any = None,
        images: Optional[str] = None,
        image_detail: Optional[str] = None,
        shard_size: int = MAX_REQUESTS,
        shard_bytes: int = MAX_BYTES,
        extra_body: Optional[dict] = None,
        **params: Any,
    ) -> List[str]:
        """Write the Batch API input JSONL for this frame without sending anything.

        The lines are the very bytes ``map`` sends on the batch backend (the
        same renderer and line writer). Rows with missing values are left
        out, as ``map`` would. When the requests exceed one file's limits,
        shards are written next to ``path`` as ``<stem>-0000.jsonl``,
        ``<stem>-0001.jsonl``...

        Parameters
        ----------
        path : str or path-like
            The file to write (its directory must exist).
        template, model, system, response_format, images, image_detail, extra_body, **params
            As for :meth:`map`; ``model`` is required.
        shard_size, shard_bytes : int
            Per-file limits (50,000 requests and 200 MB by default).

        Returns
        -------
        list of str
            The paths written.
        """
        path = os.fspath(path)
        shard_size, shard_bytes = check("shard_size", shard_size), check("shard_bytes", shard_bytes)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise OptionError(f"path: the directory {directory!r} does not exist; create it first")
        spec = self._build_spec(template, model=model, system=system, response_format=response_format,
                                images=images, image_detail=image_detail, extra_body=extra_body, params=params)
        if spec.model is None:
            raise OptionError("model= is required to write a batch file, e.g. model='gpt-4o-mini'")
        ids = unique_ids(self._obj.index)
        rendered = spec.render(self._frame(), ids)
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

    def read_results(
        self,
        paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
        template: Optional[str] = None,
        *,
        response_format: Any = None,
        system: Optional[str] = None,
        images: Optional[str] = None,
        output: str = "llm_output",
        error_column: Optional[str] = "llm_error",
        overwrite: bool = False,
        embeddings: bool = False,
    ):
        """Join downloaded Batch API output and error files back onto this frame.

        Parameters
        ----------
        paths : str or list of str
            Output and error JSONL files, in any order.
        template : str, optional
            The template used to build the requests; given, rows that were not
            sent carry the same reason ``map`` would give (missing value...).
        response_format, system, images, output, error_column, overwrite
            As for :meth:`map`: they shape the result.
        embeddings : bool
            The files answer ``/v1/embeddings`` requests (vectors in ``output``).

        Returns
        -------
        DataFrame or Series
        """
        check("overwrite", overwrite)
        check("embeddings", embeddings)
        url = EMBEDDINGS_URL if embeddings else None
        spec = self._build_spec(template if template is not None else "", url=url, system=system, images=images,
                                response_format=response_format, output=output, error_column=error_column)
        ids = unique_ids(self._obj.index)
        skipped = spec.render(self._frame(), ids).skipped if template is not None else {}
        self._check_new_columns(spec, overwrite)
        answers = read_answers(paths, "embedding" if spec.embeddings else "chat")
        out, stats, _errors = spec.join(self._obj, ids, answers, skipped=skipped, overwrite=overwrite)
        out.attrs = dict(out.attrs)
        out.attrs["pdbatch"] = {"counts": stats.to_dict(), "usage": stats.usage.to_dict()}
        return out

    def estimate(
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
        backend: Any = None,
        client: Any = None,
        cache: bool = True,
        max_retries: int = 2,
        retry_invalid: int = 0,
        wait: bool = True,
        progress: bool = True,
        timeout: Optional[float] = None,
        shard_size: Optional[int] = None,
        shard_bytes: Optional[int] = None,
        poll_interval: Optional[float] = None,
        max_poll_interval: Optional[float] = None,
        max_concurrency: Optional[int] = None,
        rpm: Optional[float] = None,
        tpm: Optional[float] = None,
        workers: Optional[int] = None,
        threads_per_worker: Optional[int] = None,
        extra_body: Optional[dict] = None,
        show: bool = True,
        **params: Any,
    ) -> dict:
        """Count and price what :meth:`map` would send, without sending anything.

        Takes the arguments of :meth:`map` (so ``map`` becomes ``estimate``
        by its name alone) and checks them the same way; renders the requests
        exactly as ``map`` would (same skipped rows, same answer-cache lookup
        with ``cache=True``); no job is created, no client is used and
        nothing is uploaded. See :mod:`pdbatch.pricing` for the price table,
        its date and how to override it, and for how tokens are counted.

        Parameters
        ----------
        show : bool
            Write the one-paragraph summary to standard output (it is also the
            returned ``summary``); default True.

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
        from .job.store import default_store, store_path
        from .pricing import estimate_requests

        RunOptions(wait, progress, timeout)
        job = JobOptions(overwrite=overwrite, cache=cache, max_retries=max_retries, retry_invalid=retry_invalid)
        check("show", show)
        shortcuts = dict(shard_size=shard_size, shard_bytes=shard_bytes, poll_interval=poll_interval,
                         max_poll_interval=max_poll_interval, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm,
                         workers=workers, threads_per_worker=threads_per_worker)
        given = {k: check(k, v) for k, v in shortcuts.items() if v is not None}
        if given:
            try:
                name = choose_backend(backend, client)
            except BackendUnavailableError:
                name = None
            if name is not None:
                check_owner(name, given)
        spec = self._build_spec(template, model=model, system=system, response_format=response_format,
                                images=images, image_detail=image_detail, output=output, error_column=error_column,
                                extra_body=extra_body, params=params)
        self._check_new_columns(spec, job.overwrite)
        ids = unique_ids(self._obj.index)
        rendered = spec.render(self._frame(), ids)
        store = default_store() if job.cache and os.path.exists(store_path()) else None
        est = estimate_requests(spec.requests(rendered), model=spec.model, rows=len(ids),
                                skipped=rendered.skipped, store=store)
        if show:  # the summary is what show=True asks for: this method's output, not a notice
            sys.stdout.write(est["summary"] + "\n")
        return est

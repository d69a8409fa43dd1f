"""``DataFrame.llm`` / ``Series.llm``: check the host, check every option, delegate, wrap.

The accessor keeps no state beyond its host (pandas builds a new accessor
object on every ``df.llm`` access); jobs live in :class:`~pdbatch.job.Job`.
Every option is checked before anything is rendered (:mod:`pdbatch.options`,
:meth:`pdbatch.core.spec.MapSpec.build`, :func:`pdbatch.backends.resolve_backend`);
the frame is checked against the spec before anything is sent.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import pandas as pd

from .backends import resolve_backend
from .core.records import EMBEDDINGS_URL
from .core.spec import MapSpec
from .errors import BackendUnavailableError, OptionError
from .job import Job, start_job
from .offline import OfflineMethods
from .operators import OperatorMethods, show_map_parameters
from .options import JobOptions, RunOptions, check

__all__ = ["LLMAccessor"]


class LLMAccessor(OfflineMethods, OperatorMethods):
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
        check("raw_column", args.get("raw_column"))
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
        be = resolve_backend(backend, client, model=spec.model, **shortcuts)
        if spec.model is None and be.name in ("batch", "realtime"):
            raise OptionError(f"model= is required for backend={be.name!r}, e.g. model='gpt-4o-mini'")
        if spec.embeddings and not be.supports_embeddings:
            raise BackendUnavailableError(
                f"the {be.name!r} backend ({be.provider}) cannot embed; use backend='batch' or backend='realtime' "
                f"with an openai.OpenAI client or OPENAI_API_KEY")
        check_spec = getattr(be, "check_spec", None)  # a backend's own limits (Anthropic's parameters)
        if check_spec is not None and not spec.embeddings:
            check_spec(spec)
        if spec.images is not None and not be.supports_vision:
            raise BackendUnavailableError(
                f"images= needs a vision model, which the {be.name!r} backend does not have; "
                f"use backend='batch' with a vision model such as gpt-4o-mini")
        if spec.answer_kind == "responses" and not getattr(be, "supports_responses", False):
            raise OptionError(f"endpoint='responses' runs on backend='batch' or 'realtime', not {be.name!r}; "
                              f"drop endpoint= (the {be.name!r} backend answers chat requests)")
        if spec.params.get("service_tier") == "flex" and be.name != "realtime":
            raise OptionError(f"service_tier='flex' is for backend='realtime' (realtime calls at the Batch API's "
                              f"price); drop it for backend={be.name!r}")
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
        raw_column: Optional[str] = None,
        overwrite: bool = False,
        backend: Any = None,
        client: Any = None,
        cache: bool = True,
        max_retries: int = 2,
        retry_invalid: int = 0,
        name: Optional[str] = None,
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
        endpoint: Optional[str] = None,
        max_cost: Optional[float] = None,
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
        raw_column : str, optional
            Also add this column: every row's answer text as it came back,
            failed or not (invalid JSON, truncated...); None where no text
            came back (skipped, unanswered, API errors). On a Series, the
            result is then a frame.
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
        name : str, optional
            What ``pdbatch jobs`` and ``attrs["pdbatch"]["name"]`` call the
            job; default the template's first words. Not part of the job's
            identity: the same ``map`` under another name re-attaches to
            its job (and renames it).
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
        endpoint : {"chat", "responses"}, optional
            ``"responses"`` (or ``"/v1/responses"``) sends Responses bodies
            (``instructions``, ``input``, ``text.format``; cap the output with
            ``max_output_tokens=``) on the batch and realtime backends;
            default chat completions.
        max_cost : float, optional
            US dollars the job may spend: refused before anything is sent
            when the estimate is over it (or cannot be priced); the realtime
            backend also stops sending once its spend reaches it (the rest
            get the error cell ``budget_exhausted``).
        **params
            Chat Completions body parameters copied into each body
            (``temperature``, ``max_completion_tokens``, ``seed``,
            ``service_tier="flex"`` on the realtime backend...); an unknown
            name raises, suggesting the closest one.

        Returns
        -------
        DataFrame, Series or Job
            The original columns and index plus the new columns;
            ``attrs["pdbatch"]`` holds the summary: job id and name, batch
            ids, ``counts`` (``sent``: requests this call sent; ``cached``:
            rows answered from the cache or an earlier run of the same job;
            ``resumed``: rows an earlier run had in flight; ``succeeded``,
            ``failed``, ``unanswered``, ``skipped``), token ``usage`` and
            ``cost`` (None where the server's prices are unknown, with a
            ``cost_note``).

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
            image_detail=image_detail, output=output, error_column=error_column, raw_column=raw_column,
            overwrite=overwrite,
            backend=backend, client=client, cache=cache, max_retries=max_retries, retry_invalid=retry_invalid,
            name=name, shard_size=shard_size, shard_bytes=shard_bytes, poll_interval=poll_interval,
            max_poll_interval=max_poll_interval, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm,
            workers=workers, threads_per_worker=threads_per_worker, extra_body=extra_body, endpoint=endpoint,
            max_cost=max_cost, **params)
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
        raw_column: Optional[str] = None,
        overwrite: bool = False,
        backend: Any = None,
        client: Any = None,
        cache: bool = True,
        max_retries: int = 2,
        retry_invalid: int = 0,
        name: Optional[str] = None,
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
        endpoint: Optional[str] = None,
        max_cost: Optional[float] = None,
        **params: Any,
    ) -> Job:
        """Render every row into a request and start the job; return the :class:`Job`.

        Takes the arguments of :meth:`map` but ``wait``, ``progress`` and
        ``timeout``. Everything is checked before anything is sent.
        """
        spec, job_opts, be = self._plan(
            template,
            dict(model=model, system=system, response_format=response_format, images=images,
                 image_detail=image_detail, output=output, error_column=error_column, raw_column=raw_column,
                 extra_body=extra_body, params=params, endpoint=endpoint),
            dict(overwrite=overwrite, cache=cache, max_retries=max_retries, retry_invalid=retry_invalid, name=name,
                 max_cost=max_cost),
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
        name: Optional[str] = None,
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
        max_cost: Optional[float] = None,
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
        error_column, overwrite, backend, client, cache, max_retries, name, wait, progress, timeout, max_cost
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
            dict(overwrite=overwrite, cache=cache, max_retries=max_retries, name=name, max_cost=max_cost), backend,
            client,
            dict(shard_size=shard_size, shard_bytes=shard_bytes, poll_interval=poll_interval,
                 max_poll_interval=max_poll_interval, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm),
            url=EMBEDDINGS_URL)
        return self._finish(start_job(self._obj, spec, be, job_opts), run)


show_map_parameters(LLMAccessor.map)

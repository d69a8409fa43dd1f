"""The accessor's methods that send nothing: write batch files, join downloaded results, estimate a cost.

:class:`OfflineMethods` is mixed into :class:`~pdbatch.accessor.LLMAccessor`;
its methods render and join through the same core functions ``map`` uses.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

from .backends import choose_backend, provider_of
from .core.batchfile import MAX_BYTES, MAX_REQUESTS, read_answers, write_lines
from .core.ids import unique_ids
from .core.records import EMBEDDINGS_URL
from .errors import BackendUnavailableError, BudgetError, OptionError
from .options import JobOptions, RunOptions, check, check_owner

__all__ = ["OfflineMethods"]


class OfflineMethods:
    """``to_batch_file``, ``read_results`` and ``estimate`` (needs the accessor's ``_obj``, ``_build_spec``...)."""

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
        endpoint: Optional[str] = None,
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
        template, model, system, response_format, images, image_detail, extra_body, endpoint, **params
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
                                images=images, image_detail=image_detail, extra_body=extra_body, params=params,
                                endpoint=endpoint)
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
        raw_column: Optional[str] = None,
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
        response_format, system, images, output, error_column, raw_column, overwrite
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
                                response_format=response_format, output=output, error_column=error_column,
                                raw_column=raw_column)
        ids = unique_ids(self._obj.index)
        skipped = spec.render(self._frame(), ids).skipped if template is not None else {}
        self._check_new_columns(spec, overwrite)
        answers = read_answers(paths, spec.answer_kind)
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
        show: bool = True,
        **params: Any,
    ) -> dict:
        """Count and price what :meth:`map` would send, without sending anything.

        Takes the arguments of :meth:`map` (so ``map`` becomes ``estimate``
        by its name alone) and checks them the same way; renders the requests
        exactly as ``map`` would (same skipped rows, same answer-cache lookup
        with ``cache=True``); no job is created and nothing is uploaded. No
        client is used, but an Anthropic one: for a Claude model it counts a
        sample of the requests with Anthropic's free ``count_tokens`` (see
        :mod:`pdbatch.pricing.claude_tokens`; without it the count is
        tiktoken's times a documented factor, and says so). See :mod:`pdbatch.pricing` for the price table,
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
            price), ``summary``, and with ``max_cost=`` the reason ``map`` would
            refuse it (``max_cost_refusal``, None when it fits; priced as the
            chosen backend pays).

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
        job = JobOptions(overwrite=overwrite, cache=cache, max_retries=max_retries, retry_invalid=retry_invalid,
                         name=name, max_cost=max_cost)
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
                                raw_column=raw_column, extra_body=extra_body, params=params, endpoint=endpoint)
        self._check_new_columns(spec, job.overwrite)
        ids = unique_ids(self._obj.index)
        rendered = spec.render(self._frame(), ids)
        store = default_store() if job.cache and os.path.exists(store_path()) else None
        counter = client if client is not None else getattr(backend, "client", None)  # Anthropic's count_tokens
        est = estimate_requests(spec.requests(rendered), model=spec.model, rows=len(ids), skipped=rendered.skipped,
                                store=store, provider=provider_of(backend, client, spec.model), client=counter)
        if job.max_cost is not None:
            est["max_cost"], est["max_cost_refusal"] = job.max_cost, _refusal(est, job.max_cost, backend, client,
                                                                               spec.params.get("service_tier"))
        if show:  # the summary is what show=True asks for: this method's output, not a notice
            sys.stdout.write(est["summary"] + "\n")
        return est


def _refusal(est: dict, max_cost: float, backend: Any, client: Any, tier: Optional[str]) -> Optional[str]:
    """Why ``map`` with ``max_cost`` would refuse what ``est`` estimates, or None."""
    from .pricing.budget import check_estimate

    try:
        name = choose_backend(backend, client)
    except BackendUnavailableError:
        name = "batch"
    try:
        check_estimate(est, max_cost, name, tier)
    except BudgetError as err:
        return str(err)
    return None

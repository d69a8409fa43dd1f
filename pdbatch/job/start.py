"""Starting a job: check the frame against the spec, find the same job or make a new one, submit it.

:func:`start_job` is what ``df.llm.submit`` (and so ``map``) calls once every
option is checked. A re-run of the same ``map`` finds its job by fingerprint
and re-attaches to it, so nothing is paid twice.
"""

from __future__ import annotations

import os
import time
import uuid
import warnings
from typing import Optional, Union

import pandas as pd

from ..backends.base import Backend
from ..core.ids import unique_ids
from ..core.spec import MapSpec
from ..errors import BackendUnavailableError
from ..options import JobOptions
from ..pricing.budget import check_estimate
from ..pricing.estimate import estimate_requests
from .cache import to_send
from .fingerprint import FINGERPRINT_PREFIX, earlier_fingerprints, fingerprint
from .host import HostCopy
from .lifecycle import Job
from .locks import job_lock
from ..core.memory import give_back, in_system_pool
from .store import JobRecord, Store, default_store, pdbatch_home

__all__ = ["start_job", "default_name", "check_budget", "NAME_WORDS"]

#: How many words of the template make a job's default name.
NAME_WORDS = 6


def default_name(template: str, words: int = NAME_WORDS) -> str:
    """A job's name when ``name=`` is not given: the template's first words, on one line.

    Examples
    --------
    >>> default_name("Summarise this review in one line:\\n{text}")
    'Summarise this review in one line:...'
    >>> default_name("{}")
    '{}'
    """
    parts = str(template).split()
    return " ".join(parts[:words]) + ("..." if len(parts) > words else "")


def check_budget(spec: MapSpec, rendered, backend: Backend, max_cost: float, store: Optional[Store]) -> None:
    """Raise :class:`~pdbatch.errors.BudgetError` when the estimate of what would be sent is over ``max_cost``.

    The estimate is :func:`~pdbatch.pricing.estimate_requests` of the rows
    ``map`` would send (rows the answer cache holds are free), priced at the
    rate ``backend`` pays (see :mod:`pdbatch.pricing.budget`). An Anthropic
    backend's client counts a sample with the free ``count_tokens``.
    """
    est = estimate_requests(spec.requests(rendered), model=spec.model, rows=len(rendered.ids),
                            skipped=rendered.skipped, store=store, provider=backend.provider,
                            client=getattr(backend, "client", None))
    check_estimate(est, max_cost, backend.name, spec.params.get("service_tier"), remote=not backend.runs_exclusively)


def new_job_id() -> str:
    """A new job id: sortable by creation time, unique across processes."""
    return "job_" + time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "_" + uuid.uuid4().hex[:10]


@in_system_pool
def start_job(
    host: Union[pd.DataFrame, pd.Series],
    spec: MapSpec,
    backend: Backend,
    options: Optional[JobOptions] = None,
    *,
    store: Optional[Store] = None,
) -> Job:
    """Validate ``host`` against ``spec``, then attach to the same job or start a new one.

    Everything that can be checked is checked here, before the backend sees a
    single request: duplicate custom_ids, column collisions, capabilities.
    """
    options = options or JobOptions()
    overwrite, cache = options.overwrite, options.cache
    max_retries, retry_invalid = options.max_retries, options.retry_invalid
    ids = unique_ids(host.index)
    if isinstance(host, pd.DataFrame):
        spec.check_collisions(host.columns, overwrite)
        frame = host
    else:
        frame = host.to_frame(name="value")
    if spec.images is not None and not backend.supports_vision:
        raise BackendUnavailableError(
            f"images= needs a vision model, which the {backend.name!r} backend does not have; "
            f"use backend='batch' with a vision model such as gpt-4o-mini"
        )
    rendered = spec.render(frame, ids)
    store = store or default_store()
    if options.max_cost is not None:  # refused before the job exists, before anything is sent
        check_budget(spec, rendered, backend, options.max_cost, store if cache else None)
    fp = fingerprint(spec, rendered, f"{backend.name}\x00{backend.provider}")
    job_id = new_job_id()
    workdir = os.path.join(pdbatch_home(), "jobs", job_id)
    name = options.name.strip() if options.name is not None else default_name(spec.source.get("template", ""))
    # The name and the provider are kept with the job (not in its fingerprint): for pdbatch jobs and pricing.
    source = dict(spec.source, _max_retries=max_retries, _retry_invalid=retry_invalid, _name=name,
                  _provider=backend.provider, _max_cost=options.max_cost)
    def new_record() -> JobRecord:
        return JobRecord(job_id, time.time(), fp, backend.name, spec.model, spec.url, len(ids), state="created",
                         spec=source, workdir=workdir)

    # A job an earlier release left unfinished is found by its old fingerprint (only computed when one exists).
    also = earlier_fingerprints(spec, rendered, backend.name) if store.has_open_jobs(FINGERPRINT_PREFIX) else []
    rec, created = store.create_or_attach(new_record(), reuse=True, also=also)
    if not created and not cache and rec.state == "finished":
        # cache=False: a finished job's answers are not reused; start afresh.
        rec, created = store.create_or_attach(new_record(), reuse=False)
    job = Job(rec.id, host, spec, backend, ids, rendered.skipped, rec.workdir, store, rec, overwrite,
              max_retries, retry_invalid, state=backend.new_state())
    with job_lock(rec.workdir):
        rec = store.job(rec.id) or rec  # the state another process may have reached meanwhile
        job.record = rec
        if rec.state == "created":  # new, or its submitter died before its requests were on disk
            # Written once the first requests are out (the provider then has work): not while they are made.
            copy = HostCopy(host, ids, rec.workdir)
            job.on_sent = copy.start
            try:
                backend.submit(job, to_send(job, rendered, cache))
            finally:
                job.on_sent = None
                failed = copy.finish()
                give_back()  # the lines, upload buffers and pickled frame just freed
            if failed is not None:
                warnings.warn(f"pdbatch: job {rec.id}: the frame could not be stored ({failed}), so "
                              f"pdbatch.Job.load({rec.id!r}).result() will not be able to join the answers back; "
                              f"keep this job object (or run the same map again) to get the frame", UserWarning)
            if rec.state == "created":  # a backend that did not call record_written itself
                job.record_written()
            if not backend.runs_exclusively:  # batches a dead submitter created run on: picked up, not sent
                job.found["in_flight"] = max(0, job.record.sent - job.requests_sent)
        else:
            if options.name is not None and rec.spec.get("_name") != name:  # renamed: the same job, a new name
                rec.spec = dict(rec.spec, _name=name)
                store.update_job(rec.id, spec=rec.spec)
            if rec.spec.get("_max_cost") != options.max_cost:  # the cap of this call (a higher one sends the rest)
                rec.spec = dict(rec.spec, _max_cost=options.max_cost)
                store.update_job(rec.id, spec=rec.spec)
            job.hashes = store.row_hashes(rec.id)
            job.note_attached()
            backend.attach(job, requests=lambda: to_send(job, rendered, cache))
        if rec.state == "written":
            rec.state = "submitted"
            store.update_job(rec.id, state="submitted")
    return job

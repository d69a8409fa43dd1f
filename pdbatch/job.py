"""``Job``: one ``map`` call in flight — submit, wait, collect, cancel.

A job owns the rendered requests' bookkeeping (custom_ids, skipped rows) and
delegates the sending to its backend. :func:`start_job` is the single path
every entry point (``map``, ``submit``, the CLI) goes through: validate,
render, submit.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import pandas as pd

from .backends.base import Backend, Progress
from .errors import JobError
from .ids import check_unique, custom_ids
from .batchfile import read_answers
from .join import join_results
from .records import Answers

from .spec import MapSpec

__all__ = ["Job", "start_job", "pdbatch_home", "new_job_id"]


def pdbatch_home() -> str:
    """Where pdbatch keeps its files: ``$PDBATCH_HOME`` or a per-user cache directory."""
    home = os.environ.get("PDBATCH_HOME")
    if home:
        return os.path.expanduser(home)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pdbatch")


def new_job_id() -> str:
    """A new job id: sortable by creation time, unique across processes."""
    return "job_" + time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "_" + uuid.uuid4().hex[:10]


@dataclass
class Job:
    """A submitted ``map``: its requests, its backend's state, its results.

    Use :meth:`wait` then :meth:`result`; ``map`` is ``submit`` + ``wait`` +
    ``result``. ``batch_ids`` lists the Batch API batches (one per shard).

    Examples
    --------
    >>> job = df.llm.submit("Summarise: {text}", model="gpt-4o-mini")   # doctest: +SKIP
    >>> job.wait().result()                                             # doctest: +SKIP
    """

    id: str
    host: Union[pd.DataFrame, pd.Series]
    spec: MapSpec
    backend: Backend
    ids: List[str]
    skipped: Dict[int, str]
    workdir: str
    overwrite: bool = False
    created_at: float = field(default_factory=time.time)
    #: backend-owned state (shards, batch ids, local answers)
    state: Dict[str, Any] = field(default_factory=dict)
    _last: Optional[Progress] = None

    # ----------------------------------------------------------------- status
    @property
    def batch_ids(self) -> List[str]:
        """Batch API batch ids of this job (empty for other backends)."""
        return [s.batch_id for s in self.state.get("shards", []) if getattr(s, "batch_id", None)]

    @property
    def sent(self) -> int:
        return len(self.ids) - len(self.skipped)

    def status(self) -> Dict[str, Any]:
        """Refresh and return a summary: state, counts, batch ids.

        Returns
        -------
        dict
            ``{"job_id", "backend", "state", "total", "completed", "failed",
            "skipped", "batch_ids"}``.
        """
        p = self.backend.refresh(self)
        self._last = p
        return {
            "job_id": self.id,
            "backend": self.backend.name,
            "state": p.state,
            "total": p.total,
            "completed": p.completed,
            "failed": p.failed,
            "skipped": len(self.skipped),
            "batch_ids": self.batch_ids,
        }

    def wait(self, progress: bool = True, timeout: Optional[float] = None) -> "Job":
        """Block until every request is answered, failed or given up.

        Parameters
        ----------
        progress : bool
            Show a tqdm progress bar of completed/failed requests.
        timeout : float, optional
            Seconds to wait at most; :class:`~pdbatch.errors.JobError` after
            that (the job keeps running: call ``wait`` again).

        Returns
        -------
        Job
            ``self``, so that ``job.wait().result()`` reads well.
        """
        self._last = self.backend.wait(self, progress=progress, timeout=timeout)
        return self

    def cancel(self) -> "Job":
        """Cancel what is still running; answers already made are kept."""
        self.backend.cancel(self)
        return self

    # ----------------------------------------------------------------- result
    def result(self, *, overwrite: Optional[bool] = None):
        """Join the answers onto the original object and return a new one.

        Rows that failed, were skipped or never answered carry their reason in
        the error column; the run never raises for a single row.

        Returns
        -------
        DataFrame or Series
            With ``attrs["pdbatch"]`` holding ids, counts and token usage.
        """
        p = self._last if self._last is not None and self._last.done else self.backend.refresh(self)
        if not p.done:
            raise JobError(
                f"job {self.id} is still {p.state} ({p.completed + p.failed}/{p.total} done); "
                f"call job.wait() first"
            )
        spec = self.spec
        out, stats, errors = join_results(
            self.host,
            self.ids,
            collect_answers(self.backend, self),
            spec.fmt.parse_text,
            kind=spec.fmt.kind,
            output=spec.output,
            error_column=spec.error_column,
            columns=list(spec.fmt.columns or ()),
            skipped=self.skipped,
            unanswered=lambda pos: self.backend.unanswered(self, pos),
            overwrite=self.overwrite if overwrite is None else overwrite,
            hint=f"The answers are kept: call job.result(overwrite=True) on job {self.id}.",
        )
        summary = {
            "job_id": self.id,
            "backend": self.backend.name,
            "model": spec.model,
            "state": p.state,
            "batch_ids": self.batch_ids,
            "counts": stats.to_dict(),
            "usage": stats.usage.to_dict(),
        }
        if isinstance(out, pd.Series) and spec.error_column:
            summary["errors"] = {self.ids[i]: e for i, e in enumerate(errors) if e is not None}
        out.attrs = dict(out.attrs)
        out.attrs["pdbatch"] = summary
        return out

    def __repr__(self) -> str:
        state = self._last.state if self._last else "submitted"
        return f"<pdbatch.Job {self.id} backend={self.backend.name} rows={len(self.ids)} sent={self.sent} state={state}>"


def collect_answers(backend: Backend, job: "Job") -> Answers:
    """All answers of ``job``: read from result files when the backend has them, else from its records."""
    files = getattr(backend, "result_files", None)
    if files is not None:
        return read_answers(files(job))
    return Answers.from_results(backend.results(job))


def start_job(
    host: Union[pd.DataFrame, pd.Series],
    spec: MapSpec,
    backend: Backend,
    *,
    overwrite: bool = False,
    workdir: Optional[str] = None,
) -> Job:
    """Validate ``host`` against ``spec``, render, and submit through ``backend``.

    Everything that can be checked is checked here, before the backend sees a
    single request: duplicate custom_ids, column collisions, capabilities.
    """
    ids = custom_ids(host.index)
    check_unique(ids)
    if isinstance(host, pd.DataFrame):
        spec.check_collisions(host.columns, overwrite)
        frame = host
    else:
        frame = host.to_frame(name="value")
    if spec.images is not None and not backend.supports_vision:
        from .errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"images= needs a vision model, which the {backend.name!r} backend does not have; "
            f"use backend='batch' or backend='realtime' with a vision model such as gpt-4o-mini"
        )
    rendered = spec.render(frame, ids)
    job_id = new_job_id()
    job = Job(
        id=job_id,
        host=host,
        spec=spec,
        backend=backend,
        ids=ids,
        skipped=rendered.skipped,
        workdir=workdir or os.path.join(pdbatch_home(), "jobs", job_id),
        overwrite=overwrite,
    )
    backend.submit(job, spec.requests(rendered))
    return job



"""Jobs: the state machine of one ``map`` call, the SQLite job store, the answer cache, locks.

``from pdbatch.job import Job`` (the import path of earlier releases) keeps working.
"""

from .lifecycle import Job, jobs
from .start import start_job

__all__ = ["Job", "jobs", "start_job"]

"""pdbatch: enrich pandas DataFrames with LLM output in one line.

Importing pdbatch registers the ``.llm`` accessor on ``DataFrame`` and
``Series``::

    import pdbatch
    out = df.llm.map("Title: {Series_Title}\\n{Overview}", model="gpt-4o-mini",
                     response_format=Movie)

Requests run as an OpenAI Batch job (half price), or on a local model; answers
come back as new columns on the same index. With Dask installed, ``.llm`` is
also registered on Dask DataFrames and Series once ``dask.dataframe`` is
imported (before or after pdbatch; see :mod:`pdbatch.scale`).
"""

from __future__ import annotations

import warnings

import pandas as pd

from . import errors
from . import pricing
from .accessor import LLMAccessor
from .backends.anthropic import AnthropicBatch
from .backends.batch import Batch
from .backends.local import Local
from .backends.realtime import Realtime
from .errors import PdbatchError
from .job.lifecycle import Job, jobs
from .core.records import Request, Result, Usage
from .scale import register_when_imported

__all__ = ["LLMAccessor", "Batch", "AnthropicBatch", "Realtime", "Local", "Job", "jobs", "Request", "Result", "Usage", "PdbatchError", "errors", "pricing", "__version__"]
__version__ = "0.1.0"

with warnings.catch_warnings():
    # Re-importing (e.g. importlib.reload) re-registers; pandas warns about that.
    warnings.simplefilter("ignore", UserWarning)
    pd.api.extensions.register_dataframe_accessor("llm")(LLMAccessor)
    pd.api.extensions.register_series_accessor("llm")(LLMAccessor)
register_when_imported()  # ddf.llm, without importing Dask here

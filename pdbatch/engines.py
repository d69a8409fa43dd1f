"""Kept import path: the local server's engines live in :mod:`pdbatch.server.engines`."""

from .server.engines import *  # noqa: F401,F403
from .server.engines import __all__  # noqa: F401

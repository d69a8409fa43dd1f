"""The in-process llama.cpp model (``[local]`` extra): model resolution, instances and the pool."""

from .model import *  # noqa: F401,F403
from .model import __all__  # noqa: F401

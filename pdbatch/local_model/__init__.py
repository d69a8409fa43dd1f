"""The in-process llama.cpp model (``[local]`` extra).

:mod:`~pdbatch.local_model.model` resolves the model file and pools
instances; :mod:`~pdbatch.local_model.llama` is one llama.cpp instance and
the translation of OpenAI chat bodies it needs.
"""

from . import llama, model
from .llama import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403

__all__ = model.__all__ + llama.__all__

"""The in-process llama.cpp model (``[local]`` extra).

:mod:`~pdbatch.local_model.model` resolves the model file and pools
instances; :mod:`~pdbatch.local_model.llama` is one llama.cpp instance and
the translation of OpenAI chat bodies it needs;
:mod:`~pdbatch.local_model.batched` is one llama.cpp context answering several
prompts per forward pass (:mod:`~pdbatch.local_model.sampler` picks each
answer's tokens, :mod:`~pdbatch.local_model.weights` gives it weights it
multiplies fast in batches); :mod:`~pdbatch.local_model.embed` is llama.cpp's
embedding mode.
"""

from . import batched, embed, llama, model
from .batched import *  # noqa: F401,F403
from .embed import *  # noqa: F401,F403
from .llama import *  # noqa: F401,F403
from .model import *  # noqa: F401,F403

__all__ = model.__all__ + llama.__all__ + embed.__all__ + [n for n in batched.__all__ if n not in model.__all__]

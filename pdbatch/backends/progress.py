"""Progress bars: a notebook widget when ipywidgets is there, plain text otherwise.

``tqdm.auto`` warns ("IProgress not found") in a notebook without ipywidgets;
this picks the widget bar only when it can work.
"""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["progress_bar"]


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(**kwargs: Any):
    """A tqdm bar: the notebook widget where it works, the text bar elsewhere."""
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm import tqdm
    return tqdm(**kwargs)

"""Progress bars: a notebook widget when ipywidgets is there, plain text otherwise.

Like ``tqdm.auto``, but ``tqdm.auto`` warns ("IProgress not found") in a
notebook without ipywidgets; this picks the widget bar only when it can work.
The text bar draws a finished bar's last line once: ``close()`` does not draw
again the state the bar already shows (in a log, where ``\\r`` does not
overwrite, tqdm would repeat the final line).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from tqdm import tqdm as _tqdm

__all__ = ["progress_bar", "in_notebook"]


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (JupyterLab, VS Code, Colab: their shells derive from ipykernel's)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__)


class TextBar(_tqdm):
    """The text bar; ``close()`` leaves the last line as it is when it already shows the final state.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> bar = TextBar(total=2, file=out, bar_format="{n}/{total}{postfix}")
    >>> bar.update(2)
    >>> bar.close()
    >>> out.getvalue().split("\\r")
    ['', '0/2', '2/2\\n']
    """

    _drawn: Any = None

    def display(self, msg: Any = None, pos: Any = None) -> Any:
        if msg is None:
            state = (self.n, self.total, str(self.postfix))
            if self.disable and state == self._drawn:  # close() redrawing the line on screen
                return True
            self._drawn = state
        return super().display(msg, pos)


def progress_bar(**kwargs: Any):
    """A tqdm bar: the notebook widget where it works, :class:`TextBar` elsewhere."""
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm

        return tqdm(**kwargs)
    return TextBar(**kwargs)

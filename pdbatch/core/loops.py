"""Repetition loops: does a cut-off answer end by repeating itself?

A small model that runs out of tokens has usually not "run out of room": it
got stuck saying the same few words again and again (``"a life of
ambition, a life of ambition, ..."``) or emitting whitespace inside a JSON
grammar. Raising the token limit does not help then; a repeat penalty, a
``maxLength``, a shorter prompt or a bigger model does. :func:`repetition_loop`
tells the two cases apart so that the error cell can say which it is
(:func:`pdbatch.core.answers.answer_reason`).
"""

from __future__ import annotations

from typing import Optional

__all__ = ["repetition_loop", "LOOP_MIN_REPEATS", "LOOP_MIN_CHARS", "LOOP_MAX_PERIOD"]

#: A unit must come back at least this many times in a row at the end of the text.
LOOP_MIN_REPEATS = 3
#: ... and the repeated stretch must cover at least this many characters.
LOOP_MIN_CHARS = 24
#: Longest repeated unit looked for, in characters.
LOOP_MAX_PERIOD = 200
# Only the end of the text is read: a loop runs until the token limit.
_TAIL = 4 * LOOP_MAX_PERIOD


def repetition_loop(text: str) -> Optional[str]:
    """The unit the end of ``text`` keeps repeating, or None when it does not loop.

    The end of ``text`` loops when, for some period ``p`` (1 to
    :data:`LOOP_MAX_PERIOD` characters), its last characters each equal the
    character ``p`` before them over a stretch that holds the unit at least
    :data:`LOOP_MIN_REPEATS` times and :data:`LOOP_MIN_CHARS` characters. The
    shortest such period wins. The text may stop in the middle of a unit, as a
    truncated answer does.

    Parameters
    ----------
    text : str
        An answer's text (typically one cut off by the token limit).

    Returns
    -------
    str or None
        The repeated unit as it first appears in the looping stretch.

    Examples
    --------
    >>> repetition_loop('{"summary": "A man seeks a life of ambition, a life of ambition, a life of ambition, a life of')
    ' a life of ambition,'
    >>> repetition_loop('{"a": [' + '\\n' * 40) == '\\n'
    True
    >>> repetition_loop('{"summary": "A penniless tramp raises an abandoned baby as his own, until the auth') is None
    True
    """
    if not isinstance(text, str) or len(text) < LOOP_MIN_CHARS:
        return None
    tail = text[-_TAIL:]
    n = len(tail)
    for p in range(1, min(LOOP_MAX_PERIOD, n // LOOP_MIN_REPEATS) + 1):
        j = n - 1
        while j - p >= 0 and tail[j] == tail[j - p]:
            j -= 1
        covered = n - 1 - j + p  # characters of the periodic stretch, first unit included
        if covered >= max(LOOP_MIN_REPEATS * p, LOOP_MIN_CHARS):
            start = j + 1 - p
            return tail[start:start + p]
    return None

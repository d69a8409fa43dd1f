"""Answers into the job store and, at the same time, into parsed columns for the join.

A shard's answers are stored (one segment: Arrow IPC encoding, an SQLite
insert, most of it outside the GIL) in a thread while this thread parses them
(:func:`~pdbatch.core.fields.preparse`, Python work): the last shard's answers
are what a ``map`` waits on after its provider has finished, so its two halves
run side by side. Nothing is returned before the answers are stored; a store
that fails raises, whatever the parsing did.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional

from ..core.answers import Answers
from ..core.fields import Parsed, preparse
from ..core.memory import give_back
from ..core.parsing import as_is
from .answer_store import SEGMENT_MIN, segment_table

__all__ = ["store_and_parse"]

#: From this many answers on, what storing and parsing them freed goes back to the system (a few ms).
GIVE_BACK_ANSWERS = 10_000


def store_and_parse(store: Any, job_id: str, answers: Answers, hashes: Any, parse_text: Any,
                    columns: Optional[List[str]], *, attempt: int = 0) -> Optional[Parsed]:
    """Store ``answers`` for job ``job_id``; return what :func:`preparse` makes of them (None: nothing to keep).

    A few answers (arriving one at a time) are stored as rows and left to the
    join to parse. Many are stored as one segment in a second thread while
    this one parses them; the parsed rows name that segment as their origin.
    """
    if len(answers) < SEGMENT_MIN:
        store.put_answers(job_id, answers, hashes, attempt=attempt)
        return None
    if parse_text is as_is:  # text and embedding answers are used as they are
        store.put_segment(job_id, answers, hashes, attempt=attempt)
        return None
    # Made here: the thread below then needs the GIL little (each Arrow call would wait for it behind the parser).
    table = segment_table(answers, hashes, attempt)  # in row order: parsed in the order stored
    answers = Answers(**{name: table.column(name) for name in ("custom_id",) + Answers.COLUMNS})
    with ThreadPoolExecutor(1, thread_name_prefix="pdbatch-store") as pool:  # waited for on the way out
        stored = pool.submit(store.put_segment, job_id, table, None, attempt=attempt)
        parsed = preparse(answers, parse_text, columns, lambda: stored.result()[1])
        stored.result()  # stored, or its error raised here
    if len(answers) >= GIVE_BACK_ANSWERS:
        give_back()  # the output file's parse and the shard's texts: else each shard adds what the allocators keep
    return parsed

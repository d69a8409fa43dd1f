"""Where the Anthropic Message Batches of the local server are kept: the durable store, as for OpenAI batches.

:class:`MessageBatchDisk` is the storage side of
:class:`pdbatch.server.anthropic_api.AnthropicBatches`: each batch object is
a row of the :class:`~pdbatch.server.durable.Store`'s ``message_batches``
table, written at every change; its requests are ``messages/<id>/requests.jsonl``
(fsync'd before the batch is answered) and its results
``messages/<id>/results.jsonl``, one line per request appended as it is made
(an :class:`~pdbatch.server.answers.AnswerLog`). A server started again on the
same data directory loads every batch (:meth:`MessageBatchDisk.load`); one
that had not ended runs the requests that have no result yet.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import orjson

from .answers import AnswerLog
from .disk import sync_dir, sync_file

__all__ = ["MessageBatchDisk"]

_KINDS = ("succeeded", "errored", "canceled", "expired")


class MessageBatchDisk:
    """Message Batches in ``store`` (a :class:`~pdbatch.server.durable.Store`)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def load(self) -> Tuple[Dict[str, dict], Dict[str, List[dict]], Dict[str, List[bytes]]]:
        """The stored batches by id (oldest first), the requests of those not ended, the result lines of the others."""
        batches, requests, results = {}, {}, {}
        for obj in self.store.message_batches():
            bid, folder = obj["id"], self.store.message_dir(obj["id"])
            batches[bid] = obj
            if obj["processing_status"] == "ended":
                path = folder / "results.jsonl"
                results[bid] = path.read_bytes().splitlines() if path.exists() else []
            else:
                requests[bid] = [orjson.loads(x) for x in (folder / "requests.jsonl").read_bytes().splitlines()]
        return batches, requests, results

    def create(self, obj: dict, requests: List[dict]) -> None:
        """Store a new batch: its requests on the disk first, then its object."""
        folder = self.store.message_dir(obj["id"])
        folder.mkdir(parents=True)
        path = folder / "requests.jsonl"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in requests))
        sync_file(path)
        sync_dir(folder)
        sync_dir(folder.parent)
        self.store.save_message_batch(obj)

    def results(self, bid: str) -> AnswerLog:
        """The batch's result lines, to append to (:meth:`AnswerLog.recover` tells which requests have one)."""
        return AnswerLog(self.store.message_dir(bid) / "results.jsonl")

    @staticmethod
    def finish(log: AnswerLog) -> Tuple[List[bytes], Dict[str, int]]:
        """Close ``log`` (synced); its lines and the ``request_counts`` they make."""
        path = log.final()
        lines = path.read_bytes().splitlines() if path is not None else []
        counts = dict.fromkeys(_KINDS, 0)
        for line in lines:
            counts[orjson.loads(line)["result"]["type"]] += 1
        return lines, counts

    def save(self, obj: dict) -> None:
        """Store the batch object as it is now."""
        self.store.save_message_batch(obj)

    def drop(self, bid: str) -> None:
        """Forget the batch and remove its directory."""
        self.store.drop_message_batch(bid)

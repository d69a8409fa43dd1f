"""The one exception hierarchy of pdbatch.

Every exception pdbatch raises derives from :class:`PdbatchError`. Errors about
bad input also derive from the builtin they resemble (``ValueError``,
``TypeError``, ``KeyError``) so that generic ``except ValueError`` handlers keep
working. Each message names the argument, column or environment variable at
fault and says how to fix it.

Per-row failures (invalid JSON, schema violations, API errors for one request)
are *not* exceptions: they become error cells in the result frame.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

__all__ = [
    "PdbatchError",
    "InputError",
    "TemplateError",
    "MissingColumnError",
    "DuplicateIdError",
    "EmptyIdError",
    "ColumnCollisionError",
    "SchemaError",
    "OptionError",
    "BudgetError",
    "BackendUnavailableError",
    "BatchFailedError",
    "JobError",
    "ServerError",
    "EngineError",
]


class PdbatchError(Exception):
    """Root of every exception raised by pdbatch."""


class InputError(PdbatchError, ValueError):
    """Bad input detected before anything was sent (nothing was uploaded)."""


class TemplateError(InputError):
    """A prompt template cannot be parsed or rendered."""


class MissingColumnError(TemplateError):
    """A template or option names a column that the frame does not have."""

    def __init__(self, missing: Sequence[str], available: Sequence[Any], where: str = "template"):
        self.missing = list(missing)
        self.available = [str(c) for c in available]
        shown = ", ".join(repr(c) for c in self.available[:30])
        if len(self.available) > 30:
            shown += f", ... ({len(self.available)} in all)"
        names = ", ".join(repr(m) for m in self.missing)
        super().__init__(
            f"{where} refers to column(s) {names} which the frame does not have; "
            f"available columns: {shown}. Fix the field name or add the column "
            f"(literal braces are written {{{{ and }}}})."
        )


class DuplicateIdError(InputError):
    """Two index labels give the same custom_id."""

    def __init__(self, duplicates: Sequence[str], total: int):
        self.duplicates = list(duplicates)
        shown = ", ".join(repr(d) for d in self.duplicates[:10])
        more = f" and {total - 10} more" if total > 10 else ""
        super().__init__(
            f"the index must be unique once turned into strings (it becomes each request's "
            f"custom_id), but these labels repeat: {shown}{more}. Call df.reset_index() "
            f"(or otherwise make the index unique) before mapping."
        )


class EmptyIdError(InputError):
    """An index label gives an empty custom_id, which the Batch API refuses."""

    def __init__(self, label: Any, position: int):
        self.label, self.position = label, position
        super().__init__(
            f"the index label {label!r} at row {position} turns into an empty custom_id, "
            f"and every request needs a non-empty one. Call df.reset_index() (or give those rows "
            f"a non-empty label) before mapping."
        )


class ColumnCollisionError(InputError):
    """A new column would overwrite an existing one."""

    def __init__(self, columns: Sequence[str], hint: str = ""):
        self.columns = list(columns)
        names = ", ".join(repr(c) for c in self.columns)
        super().__init__(
            f"output column(s) {names} already exist in the frame; pass overwrite=True to "
            f"replace them, or choose other names with output= / error_column=." + (f" {hint}" if hint else "")
        )


class SchemaError(InputError):
    """A ``response_format`` schema is malformed or unsupported."""


class OptionError(PdbatchError, TypeError):
    """An unknown or invalid option was passed."""


class BudgetError(OptionError):
    """``max_cost=`` refuses a call before anything is sent: the estimate is over it, or cannot be made."""


class BackendUnavailableError(PdbatchError, RuntimeError):
    """The requested backend cannot run here (missing key, package or capability)."""


class BatchFailedError(PdbatchError, RuntimeError):
    """A batch failed file-level validation; ``errors`` holds the server's list."""

    def __init__(self, batch_id: str, errors: Sequence[dict]):
        self.batch_id = batch_id
        self.errors = list(errors)
        lines = []
        for e in self.errors[:10]:
            where = f" (line {e.get('line')})" if e.get("line") is not None else ""
            lines.append(f"  - {e.get('code')}: {e.get('message')}{where}")
        more = f"\n  ... and {len(self.errors) - 10} more" if len(self.errors) > 10 else ""
        super().__init__(
            f"batch {batch_id} failed validation on the server:\n" + "\n".join(lines) + more
        )


class JobError(PdbatchError, RuntimeError):
    """A job cannot do what was asked (unknown id, wrong state)."""


class ServerError(PdbatchError, RuntimeError):
    """The local Batch API server could not start or serve."""


class EngineError(PdbatchError, RuntimeError):
    """A request failed inside an engine of the local server or the local model; becomes an OpenAI-shaped error.

    Parameters
    ----------
    status_code : int
        HTTP status of the failure (4xx or 5xx).
    code : str
        Machine-readable code, e.g. ``"context_length_exceeded"``.
    message : str
        Human-readable message.
    type : str, optional
        Error type; defaults to ``"invalid_request_error"`` for 4xx and
        ``"server_error"`` for 5xx.
    param : str, optional
        The request parameter at fault, if any.

    Examples
    --------
    >>> e = EngineError(400, "context_length_exceeded", "too long")
    >>> e.to_body()["error"]["type"]
    'invalid_request_error'
    """

    def __init__(self, status_code: int, code: str, message: str, *,
                 type: Optional[str] = None, param: Optional[str] = None):
        super().__init__(message)
        self.status_code = int(status_code)
        self.code = code
        self.message = message
        self.type = type or ("server_error" if self.status_code >= 500 else "invalid_request_error")
        self.param = param

    def to_body(self) -> dict:
        """The ``{"error": {...}}`` body OpenAI returns for this failure."""
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

"""Tests for pdbatch/errors.py: one root, the builtin each error resembles, messages that say how to fix."""

from __future__ import annotations

import pytest

import pdbatch.errors as errors
from pdbatch.core.batchfile import write_shards
from pdbatch.errors import (
    BackendUnavailableError,
    BatchFailedError,
    ColumnCollisionError,
    DuplicateIdError,
    InputError,
    JobError,
    MissingColumnError,
    OptionError,
    PdbatchError,
    SchemaError,
    ServerError,
    TemplateError,
)
from pdbatch.core.parsing import response_format
from pdbatch.core.template import Template

#: The builtin each public error resembles (a new error must be added here).
BUILTIN = {
    "InputError": ValueError,
    "TemplateError": ValueError,
    "MissingColumnError": ValueError,
    "DuplicateIdError": ValueError,
    "EmptyIdError": ValueError,
    "ColumnCollisionError": ValueError,
    "SchemaError": ValueError,
    "OptionError": TypeError,
    "BudgetError": TypeError,
    "BackendUnavailableError": RuntimeError,
    "BatchFailedError": RuntimeError,
    "JobError": RuntimeError,
    "ServerError": RuntimeError,
    "EngineError": RuntimeError,
}


def test_every_public_error_has_a_builtin_listed_here():
    public = set(errors.__all__) - {"PdbatchError"}
    assert public == set(BUILTIN), "errors.__all__ changed: classify the new error in BUILTIN"


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_error_derives_from_root_and_builtin(name):
    cls = getattr(errors, name)
    assert issubclass(cls, PdbatchError)
    assert issubclass(cls, BUILTIN[name])


def test_root_is_a_plain_exception_not_a_builtin_domain_error():
    assert issubclass(PdbatchError, Exception)
    assert not issubclass(PdbatchError, (ValueError, TypeError, RuntimeError))


def test_input_errors_share_input_error():
    for cls in (TemplateError, MissingColumnError, DuplicateIdError, ColumnCollisionError, SchemaError):
        assert issubclass(cls, InputError)
    assert issubclass(MissingColumnError, TemplateError)


def test_generic_value_error_handler_catches_domain_errors():
    with pytest.raises(ValueError):
        raise MissingColumnError(["x"], ["a"])
    with pytest.raises(TypeError):
        raise OptionError("bad option")


def test_missing_column_message_names_column_available_and_fix():
    err = MissingColumnError(["Titel"], ["Title", 2024], where="system")
    msg = str(err)
    assert msg.startswith("system refers to column(s) 'Titel'")
    assert "'Title', '2024'" in msg
    assert "Fix the field name" in msg
    assert "{{" in msg  # how to write literal braces
    assert err.missing == ["Titel"]
    assert err.available == ["Title", "2024"]


def test_missing_column_message_truncates_long_column_lists():
    cols = [f"c{i}" for i in range(45)]
    msg = str(MissingColumnError(["zz"], cols))
    assert "'c29'" in msg
    assert "'c30'" not in msg
    assert "(45 in all)" in msg


def test_duplicate_id_message_names_labels_and_reset_index():
    err = DuplicateIdError(["1", "a|b"], 2)
    msg = str(err)
    assert "'1', 'a|b'" in msg
    assert "reset_index()" in msg
    assert "more" not in msg
    assert err.duplicates == ["1", "a|b"]


def test_duplicate_id_message_counts_what_it_does_not_show():
    shown = [str(i) for i in range(10)]
    msg = str(DuplicateIdError(shown, 13))
    assert "and 3 more" in msg


def test_column_collision_message_names_columns_and_options():
    err = ColumnCollisionError(["llm_output", "llm_error"])
    msg = str(err)
    assert "'llm_output', 'llm_error'" in msg
    assert "overwrite=True" in msg
    assert "output=" in msg and "error_column=" in msg
    assert err.columns == ["llm_output", "llm_error"]


def test_batch_failed_lists_server_errors_with_lines():
    errs = [{"code": "invalid_json", "message": "bad line", "line": 3},
            {"code": "duplicate_custom_id", "message": "dup", "line": None}]
    err = BatchFailedError("batch_abc", errs)
    msg = str(err)
    assert "batch_abc" in msg
    assert "invalid_json: bad line (line 3)" in msg
    assert "duplicate_custom_id: dup" in msg
    assert "dup (line" not in msg
    assert err.errors == errs and err.batch_id == "batch_abc"


def test_batch_failed_truncates_after_ten():
    errs = [{"code": f"c{i}", "message": "m"} for i in range(12)]
    msg = str(BatchFailedError("b", errs))
    assert "c9: m" in msg
    assert "c10" not in msg
    assert "and 2 more" in msg


# Errors raised by the modules: the argument at fault is named, and the fix said.


def test_schema_error_from_response_format_names_argument():
    with pytest.raises(SchemaError, match=r"^response_format must be None, 'json'"):
        response_format(42)
    with pytest.raises(SchemaError, match=r"^fmt: the top level of the schema must be an object"):
        response_format({"type": "string"}, argument="fmt")


def test_template_error_names_argument_and_how_to_escape():
    with pytest.raises(TemplateError, match=r"^system is not a valid format string.*'\{\{' and '\}\}'"):
        Template.parse("a { b", argument="system")


def test_shard_limits_error_names_options():
    with pytest.raises(InputError, match="shard_size=.*shard_bytes="):
        write_shards([], "/nonexistent-never-created", max_bytes=0)


@pytest.mark.parametrize("cls", [BackendUnavailableError, JobError, ServerError, OptionError])
def test_plain_errors_keep_their_message(cls):
    assert str(cls("set OPENAI_API_KEY")) == "set OPENAI_API_KEY"

"""Request checks of the local server: what the hosted API refuses with a 400 before running a request.

:func:`check_body` is the one entry point, called by the worker for every batch
line and by the HTTP app for every realtime call, before the engine sees the
body. It checks the bodies of ``/v1/chat/completions``, ``/v1/embeddings`` and
``/v1/responses`` as the hosted API does: required fields, the type of every
known top-level field, ranges (``temperature``, ``top_p``, penalties, token
caps, ``n``), enumerations, ``messages`` (role, content, content parts, image
URLs), ``input`` and ``response_format`` / ``text.format``. A refused body
raises :class:`~pdbatch.errors.EngineError` (400, ``invalid_request_error``)
whose ``param`` uses the API's own naming (``messages[0].role``), and whose
``code`` is the API's (``missing_required_parameter``, ``invalid_type``,
``invalid_value``, ``integer_below_min_value``, ``decimal_above_max_value``,
``empty_array``, ...).

Choices where the local server is laxer than the hosted API, on purpose:
unknown top-level fields pass (an ``--upstream`` server such as vLLM takes
its own), ``max_output_tokens`` may be below the hosted minimum of 16 and JSON
mode does not require the word "json" in the prompt (so tests can cut answers
short), and the enumerations that grow with new models (``reasoning_effort``,
``service_tier``) are only checked to be strings. Image URLs follow
:func:`pdbatch.core.images.image_url_problem` (``http(s)://`` or
``data:image/...``, at most 20 MB decoded); a refused one has code
``invalid_image_url``. :data:`UPLOAD_PURPOSES` are the upload purposes the
SDK's ``FilePurpose`` names.
"""

from __future__ import annotations

from typing import Any, Optional

from ..core.records import CHAT_URL, EMBEDDINGS_URL, RESPONSES_URL
from .fields import (ARR, BOOL, OBJ, PENALTY, POSITIVE, STR, TEMPERATURE, TOP_P, bad_value, enum, fail,
                     image_url, metadata, missing, model_name, nonempty, ranged, response_format, stop,
                     tool_choice, tools, wrong_type)

__all__ = ["check_body", "check_images", "check_purpose", "UPLOAD_PURPOSES"]

#: ``purpose`` values an upload may carry (the SDK's ``openai.types.FilePurpose``).
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")

_CHAT_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_INPUT_ROLES = ("user", "assistant", "system", "developer")
_CHAT_PARTS = {"user": ("text", "image_url", "input_audio", "file"), "assistant": ("text", "refusal")}
_INPUT_PARTS = ("input_text", "input_image", "input_file", "input_audio", "output_text", "refusal")
_CHAT_ROLE, _INPUT_ROLE, _INPUT_PART = enum(*_CHAT_ROLES), enum(*_INPUT_ROLES), enum(*_INPUT_PARTS)
_PART_KIND = {role: enum(*_CHAT_PARTS.get(role, ("text",))) for role in _CHAT_ROLES}
_DETAIL = enum("auto", "low", "high")
_NEEDS = {"tool": "tool_call_id", "function": "name"}


# -- chat completions ---------------------------------------------------------------
def _chat_part(part: Any, role: str, param: str) -> None:
    if not isinstance(part, dict):
        raise wrong_type(param, "an object", part)
    kind = part.get("type")
    if kind is None:
        raise missing(f"{param}.type")
    _PART_KIND[role](kind, f"{param}.type")
    if kind == "text" or kind == "refusal":
        if type(part.get(kind)) is not str:
            if kind not in part:
                raise missing(f"{param}.{kind}")
            STR(part[kind], f"{param}.{kind}")
    elif kind == "image_url":
        image = part.get("image_url")
        if image is None:
            raise missing(f"{param}.image_url")
        OBJ(image, f"{param}.image_url")
        image_url(image.get("url"), f"{param}.image_url.url")
        if image.get("detail") is not None:
            _DETAIL(image["detail"], f"{param}.image_url.detail")


def _message(msg: Any, param: str, i: int) -> None:
    """Check ``msg``, item ``i`` of ``param``; parameter names are only spelled out on failure."""
    if type(msg) is not dict and not isinstance(msg, dict):
        raise wrong_type(f"{param}[{i}]", "an object", msg)
    role = msg.get("role")
    if type(role) is not str or role not in _CHAT_ROLES:
        if role is None:
            raise missing(f"{param}[{i}].role")
        _CHAT_ROLE(role, f"{param}[{i}].role")
    content = msg.get("content")
    if type(content) is str:
        pass
    elif isinstance(content, list):
        for j, part in enumerate(content):
            _chat_part(part, role, f"{param}[{i}].content[{j}]")
    elif content is None:
        if role != "assistant" or not (msg.get("tool_calls") or msg.get("function_call")):
            raise missing(f"{param}[{i}].content")
    elif not isinstance(content, str):
        raise wrong_type(f"{param}[{i}].content", "one of a string or array of objects", content)
    needs = _NEEDS.get(role)
    if needs is not None and needs not in msg:
        raise missing(f"{param}[{i}].{needs}")
    for key in ("name", "tool_call_id"):
        value = msg.get(key)
        if value is not None and type(value) is not str:
            STR(value, f"{param}[{i}].{key}")


def _messages(value: Any, param: str) -> None:
    if not isinstance(value, list):
        raise wrong_type(param, "an array of objects", value)
    nonempty(value, param)
    for i, msg in enumerate(value):
        _message(msg, param, i)


def _stream_options(value: Any, param: str) -> None:
    OBJ(value, param)
    if value.get("include_usage") is not None:
        BOOL(value["include_usage"], f"{param}.include_usage")


_CHAT = {
    "model": model_name, "messages": _messages, "temperature": TEMPERATURE, "top_p": TOP_P,
    "frequency_penalty": PENALTY, "presence_penalty": PENALTY, "max_tokens": POSITIVE,
    "max_completion_tokens": POSITIVE, "n": ranged(True, 1, 128), "seed": ranged(True),
    "logprobs": BOOL, "top_logprobs": ranged(True, 0, 20), "logit_bias": OBJ, "stop": stop,
    "stream": BOOL, "stream_options": _stream_options, "store": BOOL, "metadata": metadata,
    "user": STR, "response_format": lambda v, p: response_format(v, p, "json_schema"), "tools": tools,
    "tool_choice": tool_choice, "parallel_tool_calls": BOOL, "modalities": ARR,
    "reasoning_effort": STR, "service_tier": STR, "prompt_cache_key": STR,
    "safety_identifier": STR, "verbosity": enum("low", "medium", "high"),
}


# -- embeddings -----------------------------------------------------------------------
def _embedding_input(value: Any, param: str) -> None:
    if isinstance(value, str):
        if not value:
            raise fail("invalid_value", f"Invalid '{param}': an empty string cannot be embedded.", param)
        return
    if not isinstance(value, list):
        raise wrong_type(param, "a string or an array of strings or token arrays", value)
    nonempty(value, param)
    if len(value) > 2048:
        raise fail("array_above_max_length", f"Invalid '{param}': array too long. Expected an array "
                   f"with maximum length 2048, but got an array with length {len(value)} instead.", param)
    kinds = {type(t) for t in value}
    if kinds == {str} and all(value) or kinds == {int}:
        return  # non-empty strings, or one input given as token ids
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            continue
        if isinstance(item, list) and item and {type(t) for t in item} == {int}:
            continue
        if isinstance(item, (str, list)):
            raise fail("invalid_value", f"Invalid '{param}[{i}]': an input must not be empty.", f"{param}[{i}]")
        raise wrong_type(f"{param}[{i}]", "a string or an array of integers", item)


_EMBEDDINGS = {"model": model_name, "input": _embedding_input, "encoding_format": enum("float", "base64"),
               "dimensions": POSITIVE, "user": STR}


# -- responses ------------------------------------------------------------------------
def _input_part(part: Any, param: str) -> None:
    if not isinstance(part, dict):
        raise wrong_type(param, "an object", part)
    kind = part.get("type")
    if kind is None:
        raise missing(f"{param}.type")
    _INPUT_PART(kind, f"{param}.type")
    if kind == "input_text" or kind == "output_text":
        if type(part.get("text")) is not str:
            if "text" not in part:
                raise missing(f"{param}.text")
            STR(part["text"], f"{param}.text")
    elif kind == "input_image":
        if part.get("image_url") is None and part.get("file_id") is None:
            raise missing(f"{param}.image_url")
        if part.get("image_url") is not None:
            image_url(part["image_url"], f"{param}.image_url")
        if part.get("detail") is not None:
            _DETAIL(part["detail"], f"{param}.detail")


def _input_item(item: Any, param: str, i: int) -> None:
    """Check ``item``, item ``i`` of ``param``; parameter names are only spelled out on failure."""
    if not isinstance(item, dict):
        raise wrong_type(f"{param}[{i}]", "an object", item)
    kind = item.get("type", "message")
    if kind != "message":
        STR(kind, f"{param}[{i}].type")
        return  # other item types (function_call_output, ...) are the engine's to accept or refuse
    role = item.get("role")
    if type(role) is not str or role not in _INPUT_ROLES:
        if role is None:
            raise missing(f"{param}[{i}].role")
        _INPUT_ROLE(role, f"{param}[{i}].role")
    content = item.get("content")
    if type(content) is str:
        return
    if content is None:
        raise missing(f"{param}[{i}].content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            _input_part(part, f"{param}[{i}].content[{j}]")
    elif not isinstance(content, str):
        raise wrong_type(f"{param}[{i}].content", "one of a string or array of objects", content)


def _responses_input(value: Any, param: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise wrong_type(param, "one of a string or array of input items", value)
    nonempty(value, param)
    for i, item in enumerate(value):
        _input_item(item, param, i)


def _text(value: Any, param: str) -> None:
    OBJ(value, param)
    if value.get("format") is not None:
        response_format(value["format"], f"{param}.format", "")


_RESPONSES = {
    "model": model_name, "input": _responses_input, "instructions": STR, "temperature": TEMPERATURE,
    "top_p": TOP_P, "max_output_tokens": POSITIVE, "stream": BOOL, "store": BOOL,
    "metadata": metadata, "text": _text, "tools": tools, "tool_choice": tool_choice,
    "parallel_tool_calls": BOOL, "previous_response_id": STR, "reasoning": OBJ,
    "service_tier": STR, "truncation": enum("auto", "disabled"), "user": STR, "include": ARR,
    "top_logprobs": ranged(True, 0, 20), "background": BOOL, "prompt_cache_key": STR,
    "safety_identifier": STR,
}

_RULES = {CHAT_URL: (_CHAT, ("model", "messages")), EMBEDDINGS_URL: (_EMBEDDINGS, ("model", "input")),
          RESPONSES_URL: (_RESPONSES, ("model", "input"))}


def check_body(body: Any, url: str, *, realtime: bool = False) -> None:
    """Raise :class:`EngineError` (400) for the first thing in ``body`` the API would refuse.

    Parameters
    ----------
    body : dict
        A request body sent to ``url`` (a batch line's ``body`` or a realtime call's).
    url : str
        The endpoint. Bodies of other endpoints than chat completions,
        embeddings and responses are only checked to be objects.
    realtime : bool, default False
        ``True`` for a realtime call: chat completions and responses may
        then ask for ``stream: true``; batch lines never stream.

    Examples
    --------
    >>> check_body({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, CHAT_URL)
    >>> check_body({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, CHAT_URL)
    Traceback (most recent call last):
    ...
    pdbatch.errors.EngineError: Invalid value for 'messages[0].role': 'robot'. Supported values are: ...
    >>> check_body({"model": "m", "input": "hi", "temperature": "hot"}, RESPONSES_URL)
    Traceback (most recent call last):
    ...
    pdbatch.errors.EngineError: Invalid type for 'temperature': expected a decimal, but got a string instead.
    """
    if not isinstance(body, dict):
        raise wrong_type("body", "an object", body)
    rules = _RULES.get(url)
    if rules is None:
        return
    table, required = rules
    for name in required:
        if name not in body:
            raise missing(name)
    for name, value in body.items():
        check = table.get(name)
        if check is not None and (value is not None or name in required):
            check(value, name)
    if url == EMBEDDINGS_URL:
        return
    if body.get("stream") and not realtime:
        raise fail("unsupported_value", "Streaming is not supported in a batch; send 'stream': false "
                                        "or leave it out.", "stream")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise fail("invalid_value", "The 'stream_options' parameter is only allowed when 'stream' "
                                    "is enabled.", "stream_options")


def check_images(body: Any, url: str) -> None:
    """Raise :class:`EngineError` (400) for the first image part of a chat ``body`` the API would refuse.

    Only the image parts are looked at (the Messages API bridge of
    :mod:`pdbatch.server.anthropic_api` checks its own bodies);
    :func:`check_body` checks them along with everything else.

    Examples
    --------
    >>> check_images({"messages": [{"role": "user", "content": [
    ...     {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]}, CHAT_URL)
    Traceback (most recent call last):
    ...
    pdbatch.errors.EngineError: Invalid image URL 'messages[0].content[0].image_url.url': unsupported ...
    """
    messages = body.get("messages") if url == CHAT_URL and isinstance(body, dict) else None
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                image_url(image.get("url") if isinstance(image, dict) else None,
                           f"messages[{i}].content[{j}].image_url.url")


def check_purpose(purpose: Optional[str]) -> None:
    """Raise :class:`EngineError` (400, ``param="purpose"``) unless ``purpose`` may be uploaded.

    Examples
    --------
    >>> check_purpose("evals")
    >>> check_purpose("batch_output")
    Traceback (most recent call last):
    ...
    pdbatch.errors.EngineError: Invalid value for 'purpose': 'batch_output'. Supported values are: ...
    """
    if purpose is None:
        raise missing("purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise bad_value("purpose", purpose, UPLOAD_PURPOSES)

"""A checked description of one ``map`` call, and the requests it renders.

:class:`MapSpec` is built (and every argument validated) before anything is
sent; :meth:`MapSpec.render` turns a frame into request bodies column-wise, and
records rows that must not be sent (missing values, unreadable images) with
the reason that becomes their error cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import orjson
import pandas as pd

from ..errors import ColumnCollisionError, MissingColumnError, OptionError, TemplateError
from .names import CHAT_PARAMS, EMBED_PARAMS, RESPONSES_PARAMS, check_params
from .join import join_results
from .parsing import ResponseFormat, response_format as _response_format
from .endpoints import RESPONSES_BUILT, RESPONSES_RENAMED, endpoint_url, responses_body_maker, responses_image
from .lines import LineTemplate, encode_one
from .records import CHAT_URL, EMBEDDINGS_URL, RESPONSES_URL, Request
from .render import CHUNK, Rendered, render
from .template import SERIES_FIELD, Template, image_part

__all__ = ["MapSpec", "Rendered", "CHAT_PARAMS", "endpoint_url"]

JSON_HINT = "Answer with a JSON object."
_DETAILS = (None, "auto", "low", "high")
#: Why a request asks for one answer: the result holds one answer per row.
N_HINT = ("the result holds one answer per row, so n must be 1 (drop n=); for k answers per row run the map "
          "k times with cache=False and a new output= each time, or repeat the rows: "
          "df.loc[df.index.repeat(k)].reset_index()")
#: Body fields pdbatch builds, which extra_body may not replace, and the argument that sets each.
BUILT_BY_PDBATCH = {
    "model": "use model=...",
    "messages": "use the template, system=... and images=...",
    "input": "use the template",
    "response_format": "use response_format=...",
    "stream": "pdbatch reads whole answers; drop it",
    "n": N_HINT,
}
def _check_new_names(fmt: ResponseFormat, output: str, error_column: Optional[str],
                     raw_column: Optional[str] = None) -> None:
    """The new columns must differ from each other: an answer must never land under the error column."""
    taken = {error_column, *(fmt.columns or ())} | ({output} if not fmt.columns and fmt.kind != "json" else set())
    if raw_column is not None and raw_column in taken:
        raise OptionError(f"raw_column={raw_column!r} is also the name of output=, error_column= or a schema "
                          f"key; the new columns must differ: pass another raw_column= name")
    if error_column is None:
        return
    if fmt.columns and error_column in fmt.columns:
        raise OptionError(f"error_column={error_column!r} is also a key of the response_format schema; "
                          f"pass another error_column= name (or error_column=None)")
    if not fmt.columns and fmt.kind != "json" and error_column == output:
        raise OptionError(f"output and error_column are both {output!r}; the answers would be lost under the "
                          f"errors: pass another output= or error_column= name")


@dataclass(frozen=True)
class MapSpec:
    """Everything a ``map`` call asks for, checked.

    Build it with :meth:`MapSpec.build`; it holds no frame, so one spec serves
    any number of frames (or Dask partitions).
    """

    template: Template
    model: Optional[str]
    system: Optional[Template] = None
    system_text: Optional[str] = None
    images: Optional[Template] = None
    image_detail: Optional[str] = None
    fmt: ResponseFormat = field(default_factory=lambda: ResponseFormat("text"))
    params: Mapping[str, Any] = field(default_factory=dict)
    output: str = "llm_output"
    error_column: Optional[str] = "llm_error"
    url: str = CHAT_URL
    #: Column of every row's answer text as it came back, failed or not (None: no such column).
    raw_column: Optional[str] = None
    #: The build arguments, JSON-able: what the job store keeps to rebuild the spec.
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_source(cls, source: Mapping[str, Any]) -> "MapSpec":
        """Rebuild a spec from :attr:`source` (no column checks: the frame is not at hand)."""
        src = {k: v for k, v in source.items() if not k.startswith("_")}  # "_..." keys are job options
        params = src.pop("params", {})
        return cls.build(src.pop("template"), columns=None, params=params, **src)

    @classmethod
    def build(
        cls,
        template: str,
        *,
        columns: Optional[Sequence[Any]],
        series: bool = False,
        model: Optional[str] = None,
        system: Optional[str] = None,
        response_format: Any = None,
        images: Optional[str] = None,
        image_detail: Optional[str] = None,
        output: str = "llm_output",
        error_column: Optional[str] = "llm_error",
        extra_body: Optional[Mapping[str, Any]] = None,
        params: Optional[Mapping[str, Any]] = None,
        url: str = CHAT_URL,
        raw_column: Optional[str] = None,
        endpoint: Optional[str] = None,
    ) -> "MapSpec":
        """Validate every argument against the frame's ``columns``; raise before any work.

        ``endpoint`` (``"chat"`` or ``"responses"``) picks ``url`` for a chat-like spec.
        """
        params = dict(params or {})
        if endpoint is not None:
            if url == EMBEDDINGS_URL:
                raise OptionError("endpoint= is for map; embeddings always go to /v1/embeddings: drop endpoint=")
            url = endpoint_url(endpoint)
        embed, responses = url == EMBEDDINGS_URL, url == RESPONSES_URL
        for key in params if responses else ():
            if key in RESPONSES_RENAMED:
                raise OptionError(f"{key}= is a Chat Completions name; with endpoint='responses' pass "
                                  f"{RESPONSES_RENAMED[key]} instead")
        check_params(params, allowed=EMBED_PARAMS if embed else RESPONSES_PARAMS if responses else CHAT_PARAMS)
        if embed and (system is not None or images is not None or response_format is not None):
            raise OptionError("embeddings take a template only: drop system=, images= and response_format=")
        if embed and params.get("dimensions") is not None and (
                isinstance(params["dimensions"], bool) or not isinstance(params["dimensions"], int)
                or params["dimensions"] < 1):
            raise OptionError(f"dimensions must be a positive integer or None, got {params['dimensions']!r}")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise OptionError(f"model must be a non-empty string such as 'gpt-4o-mini', got {model!r}")
        if not isinstance(output, str) or not output:
            raise OptionError(f"output must be a non-empty column name, got {output!r}")
        if error_column is not None and (not isinstance(error_column, str) or not error_column):
            raise OptionError(f"error_column must be a column name or None, got {error_column!r}")
        if raw_column is not None and (not isinstance(raw_column, str) or not raw_column or embed):
            raise OptionError(f"raw_column must be a column name or None (None for embeddings), got {raw_column!r}")
        if image_detail not in _DETAILS:
            raise OptionError(f"image_detail must be one of 'auto', 'low', 'high' or None, got {image_detail!r}")
        check = columns is not None or series
        cols = [SERIES_FIELD] if series else list(columns or ())
        tpl = Template.parse(template, series=series)
        if check:
            tpl.check_columns(cols, argument="template")
        sys_t = None
        if system is not None:
            sys_t = Template.parse(system, series=series, argument="system")
            if check:
                sys_t.check_columns(cols, argument="system")
        img_t = None
        if images is not None:
            if not isinstance(images, str):
                raise OptionError(f"images must be a column name or a template string, got {images!r}")
            if "{" not in images and (not check or images in {str(c) for c in cols}):
                img_t = Template.parse("{" + images + "}", argument="images")
            else:
                img_t = Template.parse(images, series=series, argument="images")
                if not img_t.fields:
                    raise MissingColumnError([images], cols, where="images")
            if check:
                img_t.check_columns(cols, argument="images")
        fmt = ResponseFormat("embedding") if embed else _response_format(response_format)
        if embed:
            params = {k: v for k, v in params.items() if v is not None}
            params.setdefault("encoding_format", "float")
        if params.get("n", 1) not in (1, None):
            raise OptionError(f"n={params['n']!r}: {N_HINT}")
        sys_text = system
        if fmt.kind == "json":
            said = (tpl.literal_text + " " + (sys_t.literal_text if sys_t else "")).lower()
            if "json" not in said:
                # The API rejects JSON mode unless the prompt mentions JSON.
                sys_text = JSON_HINT if system is None else system.rstrip() + "\n\n" + JSON_HINT
                sys_t = Template.parse(sys_text, series=series, argument="system")
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise OptionError(f"extra_body must be a dict of body fields, got {extra_body!r}")
        if extra_body:
            built = dict(BUILT_BY_PDBATCH, **(RESPONSES_BUILT if responses else {}))
            for key in extra_body:
                if key in built:
                    raise OptionError(f"extra_body may not set {key!r}, which pdbatch builds: {built[key]}")
            params.update(extra_body)
        _check_new_names(fmt, output, error_column, raw_column)
        source = {
            "template": template, "series": series, "model": model, "system": system,
            "response_format": fmt.source, "images": images, "image_detail": image_detail,
            "output": output, "error_column": error_column, "params": params, "url": url,
        }
        source.update({"raw_column": raw_column} if raw_column is not None else {})
        return cls(tpl, model, sys_t, sys_text, img_t, image_detail, fmt, params, output, error_column, url,
                   raw_column, source=source)

    def key(self) -> bytes:
        """Canonical bytes of what the requests depend on (part of a job's fingerprint)."""
        src = {k: v for k, v in self.source.items() if k not in ("output", "error_column", "raw_column")}
        return orjson.dumps({"spec": src, "url": self.url}, option=orjson.OPT_SORT_KEYS)

    @property
    def embeddings(self) -> bool:
        return self.url == EMBEDDINGS_URL

    def join(self, host, ids: Sequence[str], answers, **options: Any):
        """Join ``answers`` onto ``host`` the way this spec asks (parser, kind, column names).

        ``options`` are :func:`pdbatch.join.join_results`'s ``skipped``,
        ``unanswered``, ``overwrite``, ``hint`` and ``parsed``.
        """
        return join_results(host, ids, answers, self.fmt.text_parser(), kind=self.fmt.kind, output=self.output,
                            error_column=self.error_column, columns=list(self.fmt.columns or ()),
                            raw_column=self.raw_column, **options)

    # ------------------------------------------------------------------ columns
    def new_columns(self) -> List[str]:
        """Columns the result will add, as far as they are known before sending."""
        cols = list(self.fmt.columns) if self.fmt.columns else (
            [self.output] if self.fmt.kind in ("text", "embedding") else [])
        if self.raw_column:
            cols.append(self.raw_column)
        if self.error_column:
            cols.append(self.error_column)
        return cols

    def check_collisions(self, columns: Sequence[Any], overwrite: bool) -> None:
        """Raise :class:`ColumnCollisionError` if a new column exists and ``overwrite`` is False."""
        if overwrite:
            return
        have = {str(c) for c in columns}
        clash = [c for c in self.new_columns() if c in have]
        if clash:
            raise ColumnCollisionError(clash)

    # ---------------------------------------------------------------- rendering
    def render(self, frame: pd.DataFrame, ids: Sequence[str], *, chunk_rows: int = CHUNK) -> Rendered:
        """Check every row for sending (rows with missing values are marked skipped); see :func:`~pdbatch.core.render.render`."""
        return render(frame, ids, self.template, self.system, self.images, chunk_rows=chunk_rows)

    def _slots(self, rendered: Rendered) -> Iterator[tuple]:
        """``(position, custom_id, values)`` of every row that can be sent, in row order.

        ``values`` are what differs between two rows' bodies, in the order they
        appear in the body (see :meth:`_body`): the input text of an
        embedding; else the system text when it is a template, then the user
        content (text, or text and image parts). A row whose images cannot be
        read is marked skipped instead.
        """
        skipped = rendered.skipped
        per_row_system = self._per_row_system(rendered)
        image_parts = self._image_parts
        ids = rendered.ids
        for chunk in rendered.chunks():
            user_texts, sys_texts, images = chunk.user, chunk.system, chunk.images
            chunk_ids = ids[chunk.start:chunk.start + len(user_texts)]  # a list: a RangeIds makes them here
            for k, content in enumerate(user_texts):
                pos = chunk.start + k
                if pos in skipped:
                    continue
                if images is not None:
                    parts, reason = image_parts(images[k])
                    if reason is not None:
                        skipped[pos] = reason
                        continue
                    if self.url == RESPONSES_URL:
                        content = [{"type": "input_text", "text": content}] + [responses_image(p) for p in parts]
                    else:
                        content = [{"type": "text", "text": content}] + parts
                yield pos, chunk_ids[k], ((sys_texts[k], content) if per_row_system else (content,))

    def _per_row_system(self, rendered: Rendered) -> bool:
        """Whether each row has its own system text (a chat body whose system prompt is a template)."""
        return rendered.per_row_system and self.url != EMBEDDINGS_URL

    def _body_maker(self):
        """A function from a row's values (see :meth:`_slots`) to its request body."""
        base = dict(self.params)
        model = self.model
        if self.url == RESPONSES_URL:
            return responses_body_maker(model, self.system, self.fmt.body, base)
        if self.fmt.body is not None:
            base["response_format"] = self.fmt.body
        if self.url == EMBEDDINGS_URL:
            return lambda values: {"model": model, "input": values[0], **base}
        if self.system is not None and not self.system.fields:
            const_system = {"role": "system", "content": self.system.compiled.format()}
            return lambda values: {"model": model, "messages": [const_system, {"role": "user", "content": values[0]}],
                                   **base}
        if self.system is not None:
            return lambda values: {"model": model, "messages": [{"role": "system", "content": values[0]},
                                                                {"role": "user", "content": values[1]}], **base}
        return lambda values: {"model": model, "messages": [{"role": "user", "content": values[0]}], **base}

    @property
    def answer_kind(self) -> str:
        """What the answers are read as: ``"embedding"``, ``"responses"`` or ``"chat"`` (see ``read_answers``)."""
        return "embedding" if self.embeddings else "responses" if self.url == RESPONSES_URL else "chat"

    def requests(self, rendered: Rendered) -> Iterator[Request]:
        """Yield one :class:`Request` per row that can be sent, in row order (bodies as dicts)."""
        body, url = self._body_maker(), self.url
        for _pos, cid, values in self._slots(rendered):
            yield Request(cid, body(values), url)

    def _line_template(self, rendered: Rendered, provider: str = ""):
        """``(body maker, url, LineTemplate or None)`` for this spec and these rows."""
        body, url = self._body_maker(), self.url
        n = 2 if self._per_row_system(rendered) else 1
        return body, url, LineTemplate.build(url, body(tuple(LineTemplate.slot(k) for k in range(n))), n, provider)

    def encode(self, rendered: Rendered, provider: str = "") -> Iterator[tuple]:
        """Yield ``(position, custom_id, JSONL line, request hash)`` per row that can be sent, in row order.

        The lines are the bytes :meth:`requests` would serialize and the hashes
        what :func:`~pdbatch.core.records.request_hash` gives for ``provider``
        (who answers: part of every cache key), made by splicing each row's
        values into a body serialized once (:class:`~pdbatch.core.lines.LineTemplate`).
        """
        body, url, template = self._line_template(rendered, provider)
        if template is None:  # a body the splicer cannot take: each request serialized whole
            for pos, cid, values in self._slots(rendered):
                yield (pos, cid, *encode_one(cid, body(values), url, provider))
            return
        encode = template.encode
        for pos, cid, values in self._slots(rendered):
            line, key = encode(cid, values)
            yield pos, cid, line, key

    def lines(self, rendered: Rendered) -> Iterator[tuple]:
        """Yield ``(custom_id, JSONL line)`` per row that can be sent (see :meth:`encode`), without hashing."""
        body, url, template = self._line_template(rendered)
        if template is None:
            for _pos, cid, values in self._slots(rendered):
                yield cid, Request(cid, body(values), url).to_line()
            return
        line = template.line
        for _pos, cid, values in self._slots(rendered):
            yield cid, line(cid, values)

    def _image_parts(self, value: Any):
        if value is None or (isinstance(value, float) and value != value):
            return None, "missing value in images column"
        if isinstance(value, str):
            refs = [value]
        elif isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
            refs = list(value)
        else:
            refs = [value]
        parts = []
        for ref in refs:
            part, reason = image_part(ref, self.image_detail)
            if reason is not None:
                return None, reason
            parts.append(part)
        return parts, None

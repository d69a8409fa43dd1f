"""Operators beyond ``map``: ``classify``, ``extract``, ``filter`` and ``preview``.

:class:`OperatorMethods` is mixed into :class:`~pdbatch.accessor.LLMAccessor`.
Each operator builds a ``response_format`` and calls :meth:`~pdbatch.accessor.LLMAccessor.map`
(same custom_ids, cache, backends, retries and error cells), then reshapes
its answer; ``preview`` writes the lines ``map`` would upload with the same
line writer (:meth:`~pdbatch.core.spec.MapSpec.lines`) and sends nothing.
The operators' own arguments are checked first, then every ``map`` option as
``map`` checks it, all before anything is sent.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import orjson
import pandas as pd

from .core.ids import unique_ids
from .core.names import SPEC_ARGUMENTS
from .core.parsing import response_format as _response_format
from .errors import ColumnCollisionError, OptionError
from .options import check

__all__ = ["OperatorMethods", "FILTER_SCHEMA", "show_map_parameters"]

#: What ``filter`` asks for. The reason comes first: the model explains before it decides.
FILTER_SCHEMA = {
    "title": "filter",
    "type": "object",
    "properties": {
        "reason": {"type": "string", "description": "one short sentence: why the statement is true or false"},
        "keep": {"type": "boolean", "description": "true if the statement is true, else false"},
    },
}
#: The error column of the ``map`` that ``filter`` runs (its result takes its own ``error_column=``).
_FILTER_ERRORS = "llm_error"
#: ``map`` options that do not shape the requests (preview leaves them to ``estimate`` to check).
_RUN_OPTIONS = frozenset("""overwrite backend client cache max_retries retry_invalid name wait progress
    timeout shard_size shard_bytes poll_interval max_poll_interval max_concurrency rpm tpm workers
    threads_per_worker""".split())


def _ids_shown(ids: Sequence[str], limit: int = 5) -> str:
    return ", ".join(repr(i) for i in ids[:limit]) + (", ..." if len(ids) > limit else "")


def _refuse(operator: str, params: Mapping[str, Any], built: str) -> None:
    """Raise for the ``map`` options an operator sets itself."""
    if "response_format" in params:
        raise OptionError(f"{operator}() builds the response_format from {built}; drop response_format= "
                          f"(df.llm.map takes a schema of your own)")
    if params.get("wait", True) is not True:
        raise OptionError(f"{operator}() waits for its answers to shape them; drop wait=, or use "
                          f"df.llm.submit(...) for a job")


def _check_labels(labels: Any) -> List[str]:
    how = "labels= must be a non-empty list of unique non-empty strings, e.g. labels=['positive', 'negative']"
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (list, tuple)) or not labels:
        raise OptionError(f"{how}; got {labels!r}")
    bad = [x for x in labels if not isinstance(x, str) or not x.strip()]
    if bad:
        raise OptionError(f"{how}; {bad[0]!r} is not a non-empty string")
    seen: set = set()
    twice = [x for x in labels if x in seen or seen.add(x)]
    if twice:
        raise OptionError(f"{how}; {twice[0]!r} appears more than once")
    return list(labels)


def _fields_schema(fields: Any) -> Any:
    """The ``response_format`` of ``extract``: a JSON Schema from names and descriptions, or the pydantic class."""
    how = ("fields= must be a dict of field name -> description (a string, or None for none), e.g. "
           "fields={'price': 'the listed price in dollars', 'city': None}, a list of names, or a pydantic model class")
    if isinstance(fields, type) and hasattr(fields, "model_json_schema"):
        _response_format(fields, argument="fields")  # a model pydantic cannot turn into a schema raises here
        return fields
    if isinstance(fields, (list, tuple)):
        fields = dict.fromkeys(fields)
    if not isinstance(fields, Mapping) or not fields:
        raise OptionError(f"{how}; got {fields!r}")
    props: Dict[str, Any] = {}
    for name, desc in fields.items():
        if not isinstance(name, str) or not name:
            raise OptionError(f"{how}; the name {name!r} is not a non-empty string")
        if desc is not None and not isinstance(desc, str):
            raise OptionError(f"{how}; the description of {name!r} is {desc!r}")
        props[name] = {"type": ["string", "null"], **({"description": desc} if desc else {})}
    return {"title": "extract", "type": "object", "properties": props}


class OperatorMethods:
    """``classify``, ``extract``, ``filter`` and ``preview`` (needs the accessor's ``map``, ``estimate``...)."""

    def classify(self, template: str, labels: Sequence[str], *, output: str = "label", **params: Any):
        """Put every row in one of ``labels``; return a new object with a categorical column.

        The requests ask for ``{output: one of labels}`` (a JSON Schema
        ``enum``, labels in the order given) through :meth:`map`.

        Parameters
        ----------
        template : str
            As for :meth:`map`: the text to classify, e.g. ``"{review}"``.
        labels : list of str
            The classes: non-empty, unique, non-empty strings.
        output : str
            The label column (and the key the model answers under); default ``"label"``.
        model, system, images, error_column, overwrite, backend, client, cache, **params...
            Any other argument of :meth:`map` (``help()`` lists them), as
            for :meth:`map`; but ``response_format`` and ``wait``.

        Returns
        -------
        DataFrame
            The host's columns (a Series host: none) and index plus ``output``,
            a ``Categorical`` whose categories are ``labels`` in the given
            order, and the error column: a failed row has NaN as its label
            and the reason in the error column.

        Examples
        --------
        >>> import pandas as pd, pdbatch
        >>> from pdbatch.server import BatchServer
        >>> from pdbatch.server.engines import ScriptedEngine
        >>> judge = ScriptedEngine(lambda text, body: '{"label": "%s"}' % ("negative" if "bad" in text else "positive"))
        >>> with BatchServer(engine=judge) as srv:
        ...     df = pd.DataFrame({"review": ["great film", "bad acting"]})
        ...     out = df.llm.classify("{review}", labels=["positive", "negative"], model="gpt-4o-mini",
        ...                           backend=pdbatch.Batch(srv.client(), poll_interval=0.05), progress=False)
        >>> out["label"].tolist(), list(out["label"].cat.categories)
        (['positive', 'negative'], ['positive', 'negative'])
        """
        labels = _check_labels(labels)
        _refuse("classify", params, "labels=")
        schema = {"title": "classify", "type": "object",
                  "properties": {output: {"type": "string", "enum": labels,
                                          "description": "the one label that fits best"}}}
        out = self.map(template, response_format=schema, output=output, **params)
        out[output] = pd.Categorical(out[output], categories=labels)
        return out

    def extract(self, template: str, fields: Any, **params: Any):
        """Pull named fields out of every row's text; one new column per field, in the order given.

        Parameters
        ----------
        template : str
            As for :meth:`map`, e.g. ``"{listing}"``.
        fields : dict, list of str, or pydantic model class
            ``{name: description}``: each field is a string, or null when the
            text does not give it (``{"type": ["string", "null"]}``), with the
            description shown to the model (None: no description). A list of
            names is fields without descriptions. A pydantic ``BaseModel``
            subclass gives typed fields (validated as :meth:`map` validates it).
        model, system, images, backend, client, cache, **params...
            Any other argument of :meth:`map` (``help()`` lists them), as
            for :meth:`map`; but ``response_format`` and ``wait``.

        Returns
        -------
        DataFrame
            The host's columns and index plus one column per field and the
            error column (a failed row: None in every field, the reason in the
            error column).

        Examples
        --------
        >>> import pandas as pd, pdbatch
        >>> from pdbatch.server import BatchServer
        >>> from pdbatch.server.engines import ScriptedEngine
        >>> reader = ScriptedEngine(lambda text, body: '{"price": "%s", "city": null}' % text.split("$")[1])
        >>> with BatchServer(engine=reader) as srv:
        ...     df = pd.DataFrame({"listing": ["Loft, $1200", "Flat, $900"]})
        ...     out = df.llm.extract("{listing}", fields={"price": "the price in dollars", "city": None},
        ...                          model="gpt-4o-mini", backend=pdbatch.Batch(srv.client(), poll_interval=0.05),
        ...                          progress=False)
        >>> out[["price", "city"]].values.tolist()
        [['1200', None], ['900', None]]
        """
        schema = _fields_schema(fields)
        _refuse("extract", params, "fields=")
        return self.map(template, response_format=schema, **params)

    def filter(self, template: str, *, reason: Union[bool, str] = False, keep_failed: bool = False,
               error_column: Optional[str] = "llm_error", overwrite: bool = False, **params: Any):
        """Keep the rows for which the model says the statement ``template`` renders is true.

        Each request asks for ``{"reason": <short sentence>, "keep": <bool>}``
        (:data:`FILTER_SCHEMA`: the reason first, so the model explains before
        it decides) through :meth:`map`.

        Parameters
        ----------
        template : str
            A statement about the row, e.g. ``"{abstract} is about protein folding"``.
        reason : bool or str
            True adds the model's reason as a column ``"reason"``; a string
            names that column. Default False.
        keep_failed : bool
            Rows without a valid answer (an API error, invalid JSON, a missing
            value...) are left out by default, with a :class:`UserWarning`
            giving their number, their custom_ids and the first reason. True
            keeps them, with their reason in ``error_column``.
        error_column : str or None
            With ``keep_failed=True``, the column of the failed rows' reasons
            (None on the rows that were answered).
        overwrite : bool
            Replace the host's columns named like the new ones instead of raising.
        model, system, images, backend, client, cache, **params...
            Any other argument of :meth:`map` (``help()`` lists them), as
            for :meth:`map`; but ``response_format`` and ``wait``.

        Returns
        -------
        DataFrame or Series
            The host's rows (index, columns and order kept) for which the
            model said true, plus the columns asked for (a Series host with
            new columns becomes a frame). ``attrs["pdbatch"]`` is the
            ``map`` summary, with ``"filter": {"kept", "dropped", "failed"}``.

        Examples
        --------
        >>> import pandas as pd, pdbatch
        >>> from pdbatch.server import BatchServer
        >>> from pdbatch.server.engines import ScriptedEngine
        >>> oracle = ScriptedEngine(lambda text, body: '{"reason": "r", "keep": %s}'
        ...                         % str(text.startswith("folds")).lower())
        >>> with BatchServer(engine=oracle) as srv:
        ...     df = pd.DataFrame({"abstract": ["folds proteins", "sorts lists"]}, index=["a", "b"])
        ...     out = df.llm.filter("{abstract} is about protein folding", model="gpt-4o-mini",
        ...                         backend=pdbatch.Batch(srv.client(), poll_interval=0.05), progress=False)
        >>> out
                 abstract
        a  folds proteins
        """
        if reason is not False and reason is not True and (not isinstance(reason, str) or not reason):
            raise OptionError(f"reason= must be True, False or a column name, got {reason!r}")
        if not isinstance(keep_failed, bool):
            raise OptionError(f"keep_failed= must be True or False, got {keep_failed!r}")
        if error_column is not None and (not isinstance(error_column, str) or not error_column):
            raise OptionError(f"error_column= must be a column name or None, got {error_column!r}")
        check("overwrite", overwrite)
        _refuse("filter", params, "the statement")
        new = ([("reason" if reason is True else reason)] if reason else []) + (
            [error_column] if keep_failed and error_column else [])
        if len(set(new)) < len(new):
            raise OptionError(f"reason= and error_column= both name the column {new[0]!r}; rename one")
        series = isinstance(self._obj, pd.Series)
        if not series and not overwrite and any(c in {str(x) for x in self._obj.columns} for c in new):
            raise ColumnCollisionError([c for c in new if c in {str(x) for x in self._obj.columns}])
        # The map's own columns ("reason", "keep", its error column) never reach the result: overwrite them.
        out = self.map(template, response_format=FILTER_SCHEMA, error_column=_FILTER_ERRORS, overwrite=True,
                       **params)
        errors = out[_FILTER_ERRORS]
        failed = errors.notna().to_numpy()
        keep = pd.array(out["keep"].astype(object), dtype="boolean").fillna(False).to_numpy(dtype=bool) & ~failed
        if failed.any() and not keep_failed:
            ids = [i for i, f in zip(unique_ids(self._obj.index), failed) if f]
            warnings.warn(f"filter: {len(ids)} row(s) have no answer and are left out (custom_id {_ids_shown(ids)}; "
                          f"first reason: {errors[failed].iloc[0]}); pass keep_failed=True to keep them with their "
                          f"reason in error_column=", UserWarning, stacklevel=2)
        mask = keep | failed if keep_failed else keep
        host = self._obj.to_frame() if series and new else self._obj
        res = host.loc[mask].copy()
        if reason:
            res[new[0]] = out["reason"].to_numpy()[mask]
        if keep_failed and error_column:
            res[error_column] = pd.Series(errors.to_numpy()[mask], index=res.index, dtype=object)  # None: answered
        res.attrs = dict(res.attrs)
        res.attrs["pdbatch"] = dict(out.attrs.get("pdbatch", {}), filter={
            "kept": int(mask.sum()), "dropped": int(len(mask) - mask.sum()), "failed": int(failed.sum())})
        return res

    def preview(self, template: str, *, rows: int = 3, show: bool = True, **params: Any) -> List[dict]:
        """The request lines :meth:`map` would upload for its first ``rows`` requests; nothing is sent.

        Takes the arguments of :meth:`map` (so ``map`` becomes ``preview`` by
        its name alone) and checks them as :meth:`estimate` does. The lines
        come from the line writer ``map`` uses, so they are the bytes it
        would send; rows ``map`` would not send (a missing value...) are
        passed over. No job is created, no client is used.

        Parameters
        ----------
        template : str
            As for :meth:`map`.
        rows : int
            How many requests to show; default 3.
        show : bool
            Write each request's system and user text and its input tokens,
            then the :meth:`estimate` summary of the whole ``map``, to
            standard output; default True.
        model, system, response_format, backend, client, cache, **params...
            Any other argument of :meth:`map` (``help()`` lists them), as for :meth:`map`.

        Returns
        -------
        list of dict
            One Batch API input line per request, decoded:
            ``{"custom_id", "method", "url", "body"}``.

        Examples
        --------
        >>> import pandas as pd
        >>> df = pd.DataFrame({"Series_Title": ["Heat", "Alien", "Up"]})
        >>> lines = df.llm.preview("Title: {Series_Title}", model="gpt-4o-mini", rows=2, show=False)
        >>> [(x["custom_id"], x["body"]["messages"]) for x in lines]
        [('0', [{'role': 'user', 'content': 'Title: Heat'}]), ('1', [{'role': 'user', 'content': 'Title: Alien'}])]
        """
        from .pricing import body_tokens, token_counter

        check("show", show)
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise OptionError(f"rows= must be a whole number >= 1 (how many requests to show), got {rows!r}")
        est = self.estimate(template, show=False, **params)  # map's checks, map's rendering, the whole cost
        spec_args = {k: v for k, v in params.items() if k not in _RUN_OPTIONS}
        spec = self._build_spec(template, params={k: v for k, v in spec_args.items() if k not in SPEC_ARGUMENTS},
                                **{k: v for k, v in spec_args.items() if k in SPEC_ARGUMENTS})
        lines = _first_lines_of(self._frame(), unique_ids(self._obj.index), spec, rows)
        if show:  # this method's output, as estimate(show=True) writes its summary
            count = token_counter(spec.model).count
            factor = est.get("token_factor") or 1.0  # a Claude model: the estimate's correction, per line too
            text = []
            for line in lines:
                n = body_tokens(line["body"], count)[0]
                why = f" ({n:,} counted x {factor:.2f} for Claude's tokenizer)" if factor != 1.0 else ""
                text.append(f"--- custom_id {line['custom_id']!r}: ~{round(n * factor):,} input tokens{why}")
                for msg in _messages(line["body"]):
                    content = msg["content"]
                    if not isinstance(content, str):
                        content = " ".join(p.get("text", "[image]") if p.get("type") in ("text", "input_text")
                                           else "[image]" for p in content)
                    text.append(f"[{msg['role']}] {content}")
            sys.stdout.write("\n".join(text + [est["summary"]]) + "\n")
        return lines


def _messages(body: dict) -> List[dict]:
    """The messages a body shows: chat ``messages``, Responses ``instructions`` + ``input`` items, or an input."""
    if "messages" in body:
        return body["messages"]
    inp = body.get("input")
    if isinstance(inp, list) and all(isinstance(m, dict) for m in inp):
        system = [{"role": "instructions", "content": body["instructions"]}] if "instructions" in body else []
        return system + inp
    return [{"role": "input", "content": inp}]


def _first_lines_of(frame: pd.DataFrame, ids: List[str], spec: Any, rows: int) -> List[dict]:
    """The first ``rows`` request lines of ``frame`` (decoded), rendering only as many leading rows as it takes.

    Rows that are not sent (a missing value) are passed over, so the prefix
    rendered grows (fourfold) until it holds ``rows`` lines or is the frame.
    """
    n, take = len(frame), rows
    while True:
        lines = []
        for _cid, line in spec.lines(spec.render(frame.iloc[:take], ids[:take])):
            lines.append(orjson.loads(line))
            if len(lines) == rows:
                return lines
        if take >= n:
            return lines
        take *= 4


def show_map_parameters(map_method: Any) -> None:
    """Give each operator a signature listing ``map``'s parameters beside its own, for ``help()``.

    The operators pass those through ``**params`` to ``map``, which checks
    every one (an unknown name raises with the closest one); the signature
    only shows them. ``response_format`` and ``wait``, which the operators set
    themselves, are left out, and ``output`` where there is no such column
    (``preview`` shows them all, as ``estimate`` does).
    """
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    theirs = inspect.signature(map_method).parameters
    for name in ("classify", "extract", "filter", "preview"):
        method = getattr(OperatorMethods, name)
        sig = inspect.signature(method)
        own = [p for p in sig.parameters.values() if p.kind in kinds]
        drop = {p.name for p in own} | (set() if name == "preview" else {"response_format", "wait"} if
                                        name == "classify" else {"response_format", "wait", "output"})
        added = [p for p in theirs.values() if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in drop]
        rest = [p for p in theirs.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
        method.__signature__ = sig.replace(parameters=own + added + rest)

"""The ``meta`` of a Dask ``map``: the result's columns and dtypes, known from the arguments alone.

No partition is computed to guess them. The new columns are those the pandas
path adds (:meth:`pdbatch.core.spec.MapSpec.new_columns`), in its order, with
the dtype it gives them when some rows failed: a partition's answers may all
succeed (``int64``) or not (``Int64``), so every partition is made to agree
with the meta (:func:`conform`), the nullable dtype standing for both.

One column differs from the pandas path, for what Dask does next
(``to_parquet`` cannot infer an Arrow type from an ``object`` meta): the
error column is text, missing where the row succeeded. Lists and objects
stay ``object`` as pandas keeps them; give ``to_parquet`` their Arrow type,
e.g. ``out.to_parquet(path, schema={"tags": pa.list_(pa.string())})``
(``list<...>[pyarrow]`` columns would write, but pandas 3.1 cannot read them
back).

=======================  ===========================================
answer                   column dtype
=======================  ===========================================
text, raw answer text    pandas' default string dtype
schema ``string``        pandas' default string dtype
schema ``integer``       ``Int64``
schema ``number``        ``float64``
schema ``boolean``       ``boolean``
anything else            ``object`` (lists, objects, mixed types)
error column             pandas' default string dtype (missing: ok)
embedding                ``object`` (one float32 array per row)
=======================  ===========================================
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Optional, Union

import pandas as pd
import pyarrow as pa

from ..core.spec import MapSpec
from ..errors import OptionError

__all__ = ["TEXT", "empty_host", "result_meta", "schema_dtype", "conform"]

#: The dtype the pandas path gives text (``str`` with pandas 3, ``object`` before).
TEXT = pa.chunked_array([pa.array(["a"])]).to_pandas().dtype
_SIMPLE = {"string": TEXT, "integer": "Int64", "number": "float64", "boolean": "boolean"}


def _types(node: Any, root: Mapping[str, Any], depth: int = 0) -> Optional[set]:
    """The JSON types a schema node allows (``$ref`` and ``anyOf``/``oneOf`` followed), None when unknown."""
    if not isinstance(node, Mapping) or depth > 8:
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        return _types(target, root, depth + 1)
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        return set(kind)
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list) and branches:
        found = [_types(b, root, depth + 1) for b in branches]
        return None if any(f is None for f in found) else set().union(*found)
    return None


def schema_dtype(schema: Mapping[str, Any], key: str) -> Any:
    """The meta dtype of the column of schema property ``key``.

    Examples
    --------
    >>> s = {"type": "object", "properties": {"n": {"type": "integer"}, "t": {"type": ["string", "null"]},
    ...      "x": {"anyOf": [{"type": "integer"}, {"type": "number"}]}, "l": {"type": "array"}}}
    >>> [str(schema_dtype(s, k)) for k in ("n", "x", "l")]
    ['Int64', 'float64', 'object']
    >>> schema_dtype(s, "t") == TEXT
    True
    """
    kinds = _types(schema.get("properties", {}).get(key), schema)
    kinds = None if kinds is None else kinds - {"null"}
    if kinds == {"integer", "number"}:
        return "float64"
    if kinds is not None and len(kinds) == 1:
        return _SIMPLE.get(next(iter(kinds)), "object")
    return "object"


def empty_host(dtypes: pd.Series, index_dtype: Any, index_name: Any, *, series_name: Any = None,
               series: bool = False) -> Union[pd.DataFrame, pd.Series]:
    """An empty pandas host with the collection's columns, dtypes and index (from public Dask attributes)."""
    index = pd.Index([], dtype=index_dtype, name=index_name)
    if series:
        return pd.Series([], dtype=dtypes, index=index, name=series_name)
    return pd.DataFrame({c: pd.Series([], dtype=t, index=index) for c, t in dtypes.items()}, index=index)


def _new_dtypes(spec: MapSpec) -> Dict[str, Any]:
    kind = spec.fmt.kind
    if kind == "json":
        raise OptionError(
            "response_format='json' answers with keys nobody knows before the answers arrive, so the Dask result's "
            "columns cannot be known in advance: pass meta= (e.g. meta={'sentiment': 'str', 'score': 'float64', "
            "'llm_error': 'str'} plus the frame's own columns), or pass a JSON Schema or pydantic model as "
            "response_format= so that the columns come from its keys")
    new: Dict[str, Any] = {}
    if kind == "schema":
        new.update((key, schema_dtype(spec.fmt.schema, key)) for key in spec.fmt.columns)
    else:
        new[spec.output] = object if kind == "embedding" else TEXT
    if spec.raw_column:
        new[spec.raw_column] = TEXT
    if spec.error_column:
        new[spec.error_column] = TEXT
    return new


def result_meta(host: Union[pd.DataFrame, pd.Series], spec: MapSpec) -> Union[pd.DataFrame, pd.Series]:
    """The empty result the pandas path would give for ``host`` (empty) and ``spec``: columns, order, dtypes."""
    new = _new_dtypes(spec)
    index = host.index
    if isinstance(host, pd.Series) and spec.fmt.kind in ("text", "embedding") and not spec.raw_column:
        return pd.Series([], dtype=new[spec.output], index=index, name=spec.output)
    added = pd.DataFrame({c: pd.Series([], dtype=t, index=index) for c, t in new.items()}, index=index)
    if isinstance(host, pd.Series):
        return added
    base = host.drop(columns=[c for c in host.columns if str(c) in new])  # overwrite=True replaces them
    return pd.concat([base, added], axis=1)


def conform(out: Union[pd.DataFrame, pd.Series], meta: Union[pd.DataFrame, pd.Series],
            new: List[str]) -> Union[pd.DataFrame, pd.Series]:
    """``out`` (one partition's result) with ``meta``'s columns, in its order, the ``new`` ones in its dtypes.

    A new column a partition lacks (a key no answer of a ``"json"`` map had)
    is added empty; one meta does not name is dropped, with a warning naming
    it (give ``meta=`` with it to keep it).
    """
    if isinstance(meta, pd.Series):
        if isinstance(out, pd.DataFrame):  # cannot happen with a derived meta; a user's meta= may ask for it
            raise OptionError(f"meta= is a Series but the answers make a frame with columns {list(out.columns)}; "
                              f"give meta= as a frame (a dict of column -> dtype)")
        return _cast(out, meta.dtype, meta.name)
    if isinstance(out, pd.Series):
        out = out.to_frame()
    extra = [c for c in out.columns if c not in meta.columns]
    if extra:
        warnings.warn(f"pdbatch: the answers have key(s) {extra} that meta= does not name; they are left out of "
                      f"the Dask result (add them to meta= to keep them)", UserWarning, stacklevel=2)
    cols = {}
    for c in meta.columns:
        if c not in out.columns:
            cols[c] = pd.Series(None, index=out.index, dtype=meta[c].dtype)
        else:
            cols[c] = _cast(out[c], meta[c].dtype, c) if c in new else out[c]
    result = pd.DataFrame(cols, index=out.index)
    result.attrs = out.attrs
    return result


def _cast(col: pd.Series, dtype: Any, name: Any) -> pd.Series:
    if col.dtype == dtype:
        return col
    try:
        return col.astype(dtype)
    except (TypeError, ValueError) as err:  # answers were paid for: keep them as they are, and say so
        warnings.warn(f"pdbatch: column {name!r} could not be made {dtype} as meta says ({err}); it is left "
                      f"{col.dtype} in this partition", UserWarning, stacklevel=3)
        return col

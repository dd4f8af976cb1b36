"""Canonical strings and SHA-256 row hashes, on Arrow batches.

Definition (the *reference* semantics, implemented row by row in :func:`canonical_text`,
:func:`canonical_row`, :func:`canonicalize_rows` and :func:`hash_rows`):

* a string value is canonicalised by, in this order: optional SQL normalisation (sqlglot,
  see :func:`normalize_sql`), Unicode NFC, the whitespace rule (``"collapse"``: every run of
  whitespace -- exactly the characters for which ``str.isspace()`` is true -- becomes one space and
  leading/trailing spaces are removed; ``"strip"``: only leading/trailing whitespace is removed;
  ``"keep"``), then optional lower-casing (``str.lower``);
* a non-string value becomes compact JSON with sorted keys (strings nested inside are canonicalised
  with the same rules);
* one column: the canonical string is the canonical text itself for a string column (``null``
  stays ``null``) and the JSON of the value otherwise;
* several columns: the canonical string is the compact JSON array of the per-column values
  (``json.dumps([...], ensure_ascii=False, separators=(",", ":"))``, ``null`` for nulls);
* the hash is ``sha256(canonical.encode("utf-8")).hexdigest()`` (``null`` for a ``null``
  canonical string), so it is stable across processes, platforms and library versions.

The fast path (:func:`canonicalize_arrow`, :func:`hash_arrow`) produces exactly the same values
with one byte-level pass (:func:`fastdistill.curation._kernels.collapse_whitespace`, numba) for the
default ``"collapse"`` rule that also finds the few rows NFC may change (only those go through
Arrow's utf8proc NFC kernel), ``pyarrow.compute`` string kernels for the rest, and the rare rows
that need JSON escaping or non-ASCII lower-casing are delegated to the reference functions, so both paths are equal by
construction and a test compares them. (Only caveat: for characters assigned in a newer Unicode
version than Python's ``unicodedata`` knows, Arrow's utf8proc may apply combining classes the
reference does not; the Arrow result is the newer, correct NFC.) SHA-256 itself has no Arrow kernel;
:func:`sha256_hex_arrow` feeds ``hashlib`` slices of the Arrow data buffer and writes the hex digests
straight into a new Arrow buffer (no Python string per row).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastdistill.curation._kernels import WS_RANGES as _WS_RANGES
from fastdistill.curation._kernels import (
    _buffers,
    as_string_array,
    collapse_whitespace,
    collapsed_sha256,
    nfc_candidates,
    nfc_rows_text,
)
from fastdistill.curation._kernels import to_array as _to_array

logger = logging.getLogger(__name__)

WHITESPACE_MODES = ("collapse", "strip", "keep")

WHITESPACE_CHARS = "".join(chr(c) for lo, hi in _WS_RANGES for c in range(lo, hi + 1))


def _re2_class(ranges) -> str:
    return "[" + "".join(f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}" for lo, hi in ranges) + "]"


_WS_PY = re.compile("[" + re.escape(WHITESPACE_CHARS) + "]+")
# json.dumps(ensure_ascii=False) escapes exactly these characters.
_JSON_NEEDS_ESCAPE = r'[\x{0}-\x{1f}\\"]'


@functools.lru_cache(maxsize=1)
def _nfc_candidates_re2() -> str:
    """RE2 class of the characters that can make a string non-NFC (built once, ~0.2 s).

    A string with none of them is NFC: every character is NFC by itself (no singleton or excluded
    decomposition), has combining class 0 (so no reordering) and cannot be the second half of a
    canonical composition (so nothing composes with the character before it).
    """
    ranges, start, prev = [], None, None
    for c in nfc_candidates():
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            ranges.append((start, prev))
            start = prev = c
    ranges.append((start, prev))
    return _re2_class(ranges)


def _check_options(whitespace: str) -> None:
    if whitespace not in WHITESPACE_MODES:
        raise ValueError(f"whitespace must be one of {WHITESPACE_MODES}, got {whitespace!r}")


def normalize_sql(sql: str) -> str:
    """Return a normalised form of a SQL string (sqlglot parse + regenerate, SQLite dialect).

    Keywords are upper-cased and formatting is made uniform, so ``select a  from t`` and
    ``SELECT a FROM t`` give the same text. Text that sqlglot cannot parse is returned unchanged
    (canonicalisation never drops or rejects a row; use :func:`rule_filter` to reject bad SQL).
    """
    import sqlglot  # imported lazily: only needed when SQL normalisation is asked for

    try:
        statements = sqlglot.transpile(sql, read="sqlite", write="sqlite")
    except Exception:  # noqa: BLE001 - sqlglot raises several error types on bad input
        return sql
    return ";\n".join(statements) if statements else sql


def canonical_text(value: str, *, whitespace: str = "collapse", lowercase: bool = False, sql: bool = False) -> str:
    """Canonical form of one string (reference implementation, see the module docstring)."""
    if sql:
        value = normalize_sql(value)
    value = unicodedata.normalize("NFC", value)
    if whitespace == "collapse":
        value = _WS_PY.sub(" ", value).strip(" ")
    elif whitespace == "strip":
        value = value.strip(WHITESPACE_CHARS)
    if lowercase:
        value = value.lower()
    return value


def _canonical_value(value: Any, opts: dict) -> Any:
    if isinstance(value, str):
        return canonical_text(value, **opts)
    if isinstance(value, dict):
        return {str(k): _canonical_value(v, opts) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical_value(v, opts) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return value


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=True)


def canonical_row(values: Sequence[Any], *, whitespace: str = "collapse", lowercase: bool = False,
                  sql: bool = False) -> str | None:
    """Canonical string of one row given the values of the chosen columns (reference path)."""
    opts = dict(whitespace=whitespace, lowercase=lowercase, sql=sql)
    if len(values) == 1:
        value = values[0]
        if value is None:
            return None
        if isinstance(value, str):
            return canonical_text(value, **opts)
        return _json(_canonical_value(value, opts))
    return _json([_canonical_value(v, opts) for v in values])


def _as_columns(columns: str | Sequence[str]) -> list[str]:
    cols = [columns] if isinstance(columns, str) else list(columns)
    if not cols:
        raise ValueError("columns must name at least one column")
    return cols


def _check_columns(available: Sequence[str], cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in available]
    if missing:
        raise KeyError(f"column(s) {missing} not in the dataset (columns: {list(available)})")


def canonicalize_rows(batch: dict, columns: str | Sequence[str], *, out_column: str = "canonical",
                      whitespace: str = "collapse", lowercase: bool = False, sql: bool = False) -> dict:
    """Batched row function (python format) for ``ds.map(..., batched=True)``: adds ``out_column``.

    This is the straightforward per-row reference; :func:`canonicalize` uses the Arrow path.
    """
    _check_options(whitespace)
    cols = _as_columns(columns)
    _check_columns(list(batch), cols)
    n = len(batch[cols[0]])
    out = [canonical_row([batch[c][i] for c in cols], whitespace=whitespace, lowercase=lowercase, sql=sql)
           for i in range(n)]
    return {out_column: out}


def sha256_hex(text: str | None) -> str | None:
    """SHA-256 hex digest of the UTF-8 bytes of ``text`` (``None`` for ``None``)."""
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_rows(batch: dict, columns: str | Sequence[str], *, out_column: str = "hash", canonical: bool = True,
              whitespace: str = "collapse", lowercase: bool = False, sql: bool = False) -> dict:
    """Batched row function (python format): adds ``out_column`` = SHA-256 of the canonical string.

    With ``canonical=False`` a single string column is hashed as it is.
    """
    cols = _as_columns(columns)
    if canonical:
        texts = canonicalize_rows(batch, cols, out_column="_c", whitespace=whitespace, lowercase=lowercase,
                                  sql=sql)["_c"]
    else:
        if len(cols) != 1:
            raise ValueError("canonical=False needs exactly one string column")
        texts = batch[cols[0]]
    return {out_column: [sha256_hex(t) for t in texts]}


# ----------------------------------------------------------------------------------------------
# Arrow fast path
# ----------------------------------------------------------------------------------------------

def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _row_mask(n: int, rows: np.ndarray) -> pa.Array:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return pa.array(mask)


def _sub_mask(arr: pa.Array, mask: pa.Array, fn) -> pa.Array:
    """Evaluate the boolean kernel ``fn`` only on the rows selected by ``mask`` (False elsewhere)."""
    mask_np = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    out = np.zeros(len(arr), dtype=bool)
    if mask_np.any():
        out[mask_np] = pc.fill_null(fn(arr.filter(pa.array(mask_np))), False).to_numpy(zero_copy_only=False)
    return pa.array(out)


def _patch_rows(arr: pa.Array, mask: pa.Array, fn) -> pa.Array:
    """Replace the rows selected by ``mask`` with ``fn(arr.filter(mask))`` (rows keep their order)."""
    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return arr
    return pc.replace_with_mask(arr, mask, fn(arr.filter(mask)))


def _canonical_text_arrow(arr: pa.Array, whitespace: str, lowercase: bool, sql: bool) -> pa.Array:
    arr = as_string_array(arr)
    if sql:  # sqlglot is pure Python: SQL normalisation is per row on both paths
        arr = pa.array([None if v is None else normalize_sql(v) for v in arr.to_pylist()], pa.string())
    if whitespace == "collapse":
        # One pass of the collapse kernel over the bytes; it also finds the rows holding a character
        # that NFC may change. Those (few) rows are normalised (Arrow's utf8proc kernel, on the part
        # of the row it can change) and collapsed again: NFC-then-collapse, as in the reference.
        collapsed, nfc_rows = collapse_whitespace(arr)
        if len(nfc_rows):
            renormed, _ = collapse_whitespace(nfc_rows_text(arr, nfc_rows))
            collapsed = pc.replace_with_mask(collapsed, _row_mask(len(arr), nfc_rows), renormed)
        arr = collapsed
    else:
        # NFC: the (slow) utf8proc kernel only sees rows holding a character that NFC may change
        # (the Unicode quick-check idea); all other rows -- ASCII, precomposed accents, CJK... -- are
        # already NFC.
        non_ascii = pc.fill_null(pc.invert(pc.string_is_ascii(arr)), False)
        needs_nfc = _sub_mask(arr, non_ascii, lambda sub: pc.match_substring_regex(sub, _nfc_candidates_re2()))
        arr = _patch_rows(arr, needs_nfc, lambda sub: pc.utf8_normalize(sub, "NFC"))
    if whitespace == "strip":
        arr = pc.utf8_trim(arr, WHITESPACE_CHARS)
    if lowercase:
        # ascii_lower is exact for ASCII rows; other rows use str.lower (the reference) so that both
        # paths agree on every code point.
        non_ascii = pc.invert(pc.string_is_ascii(arr))
        lowered = pc.ascii_lower(arr)
        arr = _patch_rows(lowered, non_ascii, lambda sub: pa.array(
            [None if v is None else v.lower() for v in sub.to_pylist()], pa.string()))
    return arr


def _json_fragment_arrow(arr: pa.Array, opts: dict) -> pa.Array:
    """JSON text of each value (``null`` for nulls), as in the reference ``_json``."""
    t = arr.type
    if _is_text(t):
        text = _canonical_text_arrow(arr, **opts)
        quoted = pc.binary_join_element_wise('"', text, '"', "")
        needs_escape = pc.match_substring_regex(text, _JSON_NEEDS_ESCAPE)
        quoted = _patch_rows(quoted, pc.fill_null(needs_escape, False),
                             lambda sub: pa.array([None if v is None else _json(v[1:-1]) for v in sub.to_pylist()],
                                                  pa.string()))
        return pc.fill_null(quoted, "null")
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pc.fill_null(arr.cast(pa.string()), "null")
    # Floats, nested and other types: JSON formatting of these is Python's; use the reference per row.
    return pa.array([_json(_canonical_value(v, opts)) for v in arr.to_pylist()], pa.string())


def canonicalize_arrow(table: pa.Table, columns: str | Sequence[str], *, whitespace: str = "collapse",
                       lowercase: bool = False, sql: bool = False) -> pa.Array:
    """Canonical strings (Arrow path) for the rows of an Arrow table; equal to :func:`canonical_row`."""
    _check_options(whitespace)
    cols = _as_columns(columns)
    _check_columns(table.column_names, cols)
    opts = dict(whitespace=whitespace, lowercase=lowercase, sql=sql)
    if len(cols) == 1:
        arr = _to_array(table.column(cols[0]))
        t = arr.type
        if _is_text(t):
            return _canonical_text_arrow(arr, **opts)
        if pa.types.is_null(t):
            return pa.nulls(len(arr), pa.string())
        frag = _json_fragment_arrow(arr, opts)
        return pc.if_else(pc.is_null(arr), pa.scalar(None, pa.string()), frag)
    parts = [_json_fragment_arrow(_to_array(table.column(c)), opts) for c in cols]
    return pc.binary_join_element_wise("[", *[x for p in parts for x in (p, ",")][:-1], "]", "")


def _hex_array(digests: np.ndarray, valid: pa.Array | None) -> pa.Array:
    """``(n, 32)`` uint8 digests as an Arrow string array of 64-character hex values."""
    n = len(digests)
    hex_bytes = digests.tobytes().hex().encode("ascii")
    out = pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 64 * n + 1, 64, dtype=np.int32)),
                                      pa.py_buffer(hex_bytes))
    if valid is not None:
        out = pc.if_else(valid, out, pa.scalar(None, pa.string()))
    return out


def _collapsed_text_sha256(arr: pa.Array) -> pa.Array | None:
    """SHA-256 hex of the default canonical form (NFC, collapse) of a string array in one compiled
    pass (:func:`fastdistill.curation._kernels.collapsed_sha256`); None where it is unavailable."""
    arr = as_string_array(arr)
    fused = collapsed_sha256(arr)
    if fused is None:
        return None
    digests, nfc_rows = fused
    if len(nfc_rows):  # rows NFC may change: normalise, then the same pass on those rows only
        fixed, _ = collapsed_sha256(nfc_rows_text(arr, nfc_rows))
        digests[nfc_rows] = fixed
    return _hex_array(digests, pc.is_valid(arr) if arr.null_count else None)


def sha256_hex_arrow(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """SHA-256 hex digest of every value of a string array (``null`` stays ``null``).

    There is no SHA-256 kernel in Arrow, so ``hashlib`` (OpenSSL) hashes slices of the Arrow data
    buffer; the digests are hex-encoded in one call and wrapped as an Arrow string array, so no
    Python ``str`` is created per row.
    """
    arr = _to_array(arr)
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    n = len(arr)
    if n == 0:
        return pa.array([], pa.string())
    offsets, data = _buffers(arr)
    # memoryview slices of the Arrow buffer: no copy of the data, nor of each row (1.8x faster on
    # rows of a few kB than slicing a bytes copy)
    data = memoryview(data)
    bounds = offsets.tolist()
    sha = hashlib.sha256
    digests = b"".join([sha(data[a:b]).digest() for a, b in zip(bounds, bounds[1:])])
    valid = pc.is_valid(arr) if arr.null_count else None
    return _hex_array(np.frombuffer(digests, dtype=np.uint8).reshape(n, 32), valid)


def hash_arrow(table: pa.Table, columns: str | Sequence[str], *, canonical: bool = True, whitespace: str = "collapse",
               lowercase: bool = False, sql: bool = False) -> pa.Array:
    """SHA-256 hex of the canonical string of each row (Arrow path); equal to :func:`hash_rows`."""
    cols = _as_columns(columns)
    if canonical and len(cols) == 1 and whitespace == "collapse" and not lowercase and not sql:
        _check_columns(table.column_names, cols)
        t = table.schema.field(cols[0]).type
        if _is_text(t):
            fused = _collapsed_text_sha256(table.column(cols[0]))
            if fused is not None:
                return fused
    if canonical:
        text = canonicalize_arrow(table, cols, whitespace=whitespace, lowercase=lowercase, sql=sql)
    else:
        if len(cols) != 1:
            raise ValueError("canonical=False needs exactly one string column")
        _check_columns(table.column_names, cols)
        text = table.column(cols[0])
    return sha256_hex_arrow(text)


# ----------------------------------------------------------------------------------------------
# Dataset steps
# ----------------------------------------------------------------------------------------------

def canonicalize(ds, columns: str | Sequence[str], *, out_column: str = "canonical", whitespace: str = "collapse",
                 lowercase: bool = False, sql: bool = False, num_proc: int | None = None,
                 batch_size: int = 10_000):
    """Add ``out_column``: the canonical string of ``columns`` for every row (see the module docstring).

    Args:
        ds: the ``datasets.Dataset``.
        columns: one column name or a list of names.
        out_column: name of the new (or replaced) string column.
        whitespace: ``"collapse"`` (default), ``"strip"`` or ``"keep"``.
        lowercase: lower-case the text after NFC and whitespace rules.
        sql: normalise SQL with sqlglot first (per row; slower).
        num_proc: processes for ``ds.map``.
        batch_size: rows per Arrow batch.

    Returns:
        A new Dataset with the same rows in the same order plus ``out_column``. Runs on Arrow
        batches; :func:`canonicalize_rows` is the equivalent batched row function for custom maps.
    """
    from fastdistill.curation._ds import map_arrow_columns

    _check_options(whitespace)
    cols = _as_columns(columns)
    _check_columns(ds.column_names, cols)
    return map_arrow_columns(
        ds, lambda t: {out_column: canonicalize_arrow(t, cols, whitespace=whitespace, lowercase=lowercase, sql=sql)},
        num_proc=num_proc, batch_size=batch_size, desc="canonicalize", input_columns=cols,
        params=dict(columns=cols, whitespace=whitespace, lowercase=lowercase, sql=sql))


def compute_hash(ds, columns: str | Sequence[str], *, out_column: str = "hash", canonical: bool = True,
                 whitespace: str = "collapse", lowercase: bool = False, sql: bool = False,
                 num_proc: int | None = None, batch_size: int = 10_000):
    """Add ``out_column``: SHA-256 (hex) of the canonical string of ``columns`` for every row.

    The canonical string is built as in :func:`canonicalize` (so hashing an already canonical
    column gives the same value as hashing the raw column). ``canonical=False`` hashes a single
    string column as it is. Rows whose canonical string is null get a null hash. Runs on Arrow
    batches; :func:`hash_rows` is the equivalent batched row function.
    """
    from fastdistill.curation._ds import map_arrow_columns

    _check_options(whitespace)
    cols = _as_columns(columns)
    _check_columns(ds.column_names, cols)
    return map_arrow_columns(
        ds, lambda t: {out_column: hash_arrow(t, cols, canonical=canonical, whitespace=whitespace,
                                              lowercase=lowercase, sql=sql)},
        num_proc=num_proc, batch_size=batch_size, desc="compute_hash", input_columns=cols,
        params=dict(columns=cols, canonical=canonical, whitespace=whitespace, lowercase=lowercase, sql=sql))

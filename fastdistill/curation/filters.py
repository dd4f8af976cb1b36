"""Rule-based filtering and SQL extraction from model output."""

from __future__ import annotations

import ast
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from fastdistill.curation._ds import empty_output, restore_format

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# rule_filter
# ----------------------------------------------------------------------------------------------

def parses_as_python(text: str) -> bool:
    """True when ``text`` is valid Python source (``ast.parse``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes etc. is not a failure
            ast.parse(text)
        return True
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False


def parses_as_sql(text: str) -> bool:
    """True when sqlglot parses ``text`` as SQLite SQL (with strict error level)."""
    import sqlglot  # pure-Python SQL parser, also used for SQL normalisation
    from sqlglot.errors import ErrorLevel

    if not text or not text.strip():
        return False
    try:
        trees = sqlglot.parse(text, read="sqlite", error_level=ErrorLevel.RAISE)
    except Exception:  # sqlglot raises ParseError/TokenError/others
        return False
    return any(t is not None for t in trees)


def rule_reason(value, *, min_len: int | None = None, max_len: int | None = None, regex: str | None = None,
                exclude_regex: str | None = None, parses_as: str | None = None,
                predicate: Callable[[object], bool] | None = None, row: dict | None = None) -> str | None:
    """The first rule a value breaks (``"null"``, ``"too_short"``, ``"too_long"``, ``"no_regex_match"``,
    ``"excluded_regex"``, ``"not_python"``, ``"not_sql"``, ``"predicate"``) or None if it passes."""
    if value is None:
        return "null"
    text = value if isinstance(value, str) else str(value)
    if min_len is not None and len(text) < min_len:
        return "too_short"
    if max_len is not None and len(text) > max_len:
        return "too_long"
    if regex is not None and re.search(regex, text) is None:
        return "no_regex_match"
    if exclude_regex is not None and re.search(exclude_regex, text) is not None:
        return "excluded_regex"
    if parses_as == "python" and not parses_as_python(text):
        return "not_python"
    if parses_as == "sql" and not parses_as_sql(text):
        return "not_sql"
    if predicate is not None and not predicate(row if row is not None else value):
        return "predicate"
    return None


def rule_filter_rows(batch: dict, column: str, *, out_column: str = "rule_reason", predicate_on_row: bool = False,
                     **rules) -> dict:
    """Batched row function: adds ``out_column`` = the first broken rule per row (None = passes).

    ``rules`` are the keyword arguments of :func:`rule_reason`; with ``predicate_on_row=True`` the
    predicate receives the whole row as a dict instead of the column value.
    """
    if column not in batch:
        raise KeyError(f"rule_filter: column {column!r} missing (columns: {list(batch)})")
    n = len(batch[column])
    reasons = []
    for i in range(n):
        row = {k: v[i] for k, v in batch.items()} if predicate_on_row else None
        try:
            reasons.append(rule_reason(batch[column][i], row=row, **rules))
        except Exception as exc:
            raise ValueError(f"rule_filter: rule failed on row {i} of the batch, column {column!r}: {exc}") from exc
    return {out_column: reasons}


def rule_filter(ds, column: str, *, min_len: int | None = None, max_len: int | None = None, regex: str | None = None,
                exclude_regex: str | None = None, parses_as: str | None = None,
                predicate: Callable[[object], bool] | None = None, predicate_on_row: bool = False,
                mode: str = "drop", reason_column: str = "rule_reason", num_proc: int | None = None):
    """Keep rows whose ``column`` passes every rule; ``mode="mark"`` adds ``reason_column`` instead.

    Rules (all optional): length bounds in characters, ``regex`` that must match (``re.search``),
    ``exclude_regex`` that must not, ``parses_as="python"|"sql"``, and a custom ``predicate``
    (value -> bool, or row dict -> bool with ``predicate_on_row=True``). Null values fail. Dropped
    rows are counted per reason in the log, never silently. The predicate must be picklable for
    ``num_proc > 1``.
    """
    from fastdistill.curation._params import check_step_params

    # mode, parses_as, lengths and both regular expressions are checked here, before any row
    check_step_params("rule_filter", column=column, min_len=min_len, max_len=max_len, regex=regex,
                      exclude_regex=exclude_regex, parses_as=parses_as, mode=mode, reason_column=reason_column,
                      num_proc=num_proc)
    if predicate is not None and not callable(predicate):
        raise ValueError(f"rule_filter: predicate must be callable, got {predicate!r}")
    if column not in ds.column_names:
        raise KeyError(f"rule_filter: column {column!r} missing (columns: {ds.column_names})")
    import datasets

    features = ds.features.copy()
    features[reason_column] = datasets.Value("string")
    if len(ds) == 0:
        return empty_output(ds, features) if mode == "mark" else ds
    marked = ds.with_format(None).map(
        rule_filter_rows, batched=True, num_proc=num_proc, features=features, desc="rule_filter",
        fn_kwargs=dict(column=column, out_column=reason_column, predicate_on_row=predicate_on_row, min_len=min_len,
                       max_len=max_len, regex=regex, exclude_regex=exclude_regex, parses_as=parses_as,
                       predicate=predicate))
    reasons = marked.with_format("arrow", columns=[reason_column])[:][reason_column] if len(marked) else \
        pa.chunked_array([], pa.string())
    counts = Counter(r for r in reasons.to_pylist() if r is not None) if len(reasons) else Counter()
    logger.info("rule_filter(%s): %d of %d rows break a rule %s", column, sum(counts.values()), len(marked),
                dict(counts))
    if mode == "mark":
        return restore_format(marked, ds)
    keep = np.flatnonzero(reasons.is_null().to_numpy(zero_copy_only=False)) if len(reasons) else np.zeros(0, int)
    out = marked.remove_columns(reason_column)
    if len(keep) != len(out):
        out = out.select(keep)
    return restore_format(out, ds)


# ----------------------------------------------------------------------------------------------
# clean_sql_output
# ----------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)```", re.DOTALL)
_SQL_START = re.compile(r"\b(WITH|SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|PRAGMA|REPLACE|VALUES)\b", re.IGNORECASE)


def _first_statement(sql: str) -> str:
    """Text up to the first ``;`` that is outside quotes and comments."""
    i, n, quote = 0, len(sql), None
    while i < n:
        ch = sql[i]
        if quote:
            if ch == quote:
                if i + 1 < n and sql[i + 1] == quote:  # doubled quote escape
                    i += 1
                else:
                    quote = None
        elif ch in "'\"`[":
            quote = "]" if ch == "[" else ch
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            continue
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        elif ch == ";":
            return sql[:i]
        i += 1
    return sql


def extract_sql(text: str | None) -> str | None:
    """Pull one SQL statement out of model output (reference row function of :func:`clean_sql_output`).

    Order: the first fenced block tagged ``sql`` (else the first fenced block), else the text from
    the first SQL keyword; a blank line ends an unfenced statement (prose after it is dropped);
    only the first statement is kept and trailing semicolons/whitespace are removed. Returns None
    when no SQL is found.
    """
    if not isinstance(text, str):
        return None
    blocks = _FENCE.findall(text)
    body = None
    for lang, content in blocks:
        if lang.lower() in ("sql", "sqlite"):
            body = content
            break
    if body is None and blocks:
        body = blocks[0][1]
    if body is None:
        m = _SQL_START.search(text)
        if m is None:
            return None
        body = re.split(r"\n[ \t]*\n", text[m.start():], maxsplit=1)[0]
    else:
        m = _SQL_START.search(body)
        if m is not None:
            body = body[m.start():]
    stmt = _first_statement(body).strip().rstrip(";").strip()
    return stmt or None


def clean_sql_output_rows(batch: dict, column: str = "completion", *, out_column: str = "pred_sql") -> dict:
    """Batched row function of :func:`clean_sql_output`."""
    if column not in batch:
        raise KeyError(f"clean_sql_output: column {column!r} missing (columns: {list(batch)})")
    return {out_column: [extract_sql(t) for t in batch[column]]}


def clean_sql_output(ds, column: str = "completion", *, out_column: str = "pred_sql", num_proc: int | None = None):
    """Add ``out_column`` with the SQL extracted from the model output in ``column``.

    Handles Markdown fences, prose before/after the query, trailing semicolons and several
    statements (the first is kept). Rows with no SQL get None (never dropped here).
    """
    import datasets

    if column not in ds.column_names:
        raise KeyError(f"clean_sql_output: column {column!r} missing (columns: {ds.column_names})")
    features = ds.features.copy()
    features[out_column] = datasets.Value("string")
    if len(ds) == 0:
        return empty_output(ds, features)
    out = ds.with_format(None).map(clean_sql_output_rows, batched=True, num_proc=num_proc, features=features,
                                   fn_kwargs=dict(column=column, out_column=out_column), desc="clean_sql_output")
    return restore_format(out, ds)

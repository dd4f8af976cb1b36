"""Execution-match evaluation of predicted SQL against gold SQL on each row's SQLite database.

Safety: the database is opened through a ``file:...?mode=ro`` URI (SQLite refuses every write to
it), ``PRAGMA query_only`` is set, and an authorizer (``Connection.set_authorizer``) denies
everything but reading: no INSERT/UPDATE/DELETE/CREATE/DROP/ALTER, no ATTACH/DETACH (which could
create files), no PRAGMA that sets a value. A progress handler (``set_progress_handler``) aborts a
query that runs past ``timeout_s`` (recursive CTEs that never end are interrupted). Nothing here
ever raises for a bad row: problems become an error class in ``exec_error``.

Comparison: both result sets are compared as multisets of rows (column names are ignored, values
compared with Python equality so ``1 == 1.0``); the order matters only when the gold query has a
top-level ``ORDER BY`` (found with sqlglot).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from fastdistill.curation._ds import empty_output, restore_format

logger = logging.getLogger(__name__)

ERROR_CLASSES = (
    "missing_input",        # no SQL / no database path in the row
    "db_not_found",         # the database file does not exist or cannot be opened
    "not_a_database",       # the file exists but is not an SQLite database (or is corrupt/encrypted)
    "syntax_error",         # SQLite could not parse the predicted SQL
    "no_such_table",
    "no_such_column",
    "not_authorized",       # the query tried to write, ATTACH, or set a PRAGMA
    "timeout",              # interrupted after timeout_s
    "multiple_statements",  # more than one statement (clean it with clean_sql_output)
    "too_many_rows",        # result larger than max_rows
    "runtime_error",        # any other SQLite error
    "gold_error",           # the gold query failed (prefix, e.g. "gold_error:syntax_error")
    "internal_error",       # unexpected Python error (reported, never raised)
)

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
if hasattr(sqlite3, "SQLITE_RECURSIVE"):
    _ALLOWED_ACTIONS.add(sqlite3.SQLITE_RECURSIVE)


def _authorizer(action, arg1, arg2, db_name, trigger):
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg2 is None and (arg1 or "").lower() in {"table_info", "table_xinfo",
                                                                                     "index_list", "index_info"}:
        return sqlite3.SQLITE_OK  # reading schema information only
    return sqlite3.SQLITE_DENY


def open_readonly(db_path: str | os.PathLike) -> sqlite3.Connection:
    """Open ``db_path`` read-only (``mode=ro`` URI) with the write-denying authorizer installed."""
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(str(path))
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = ON")
        # SQLite reads the file lazily: read the schema now so a file that is not a database fails
        # here (sqlite3.DatabaseError "file is not a database"), not as the gold query's error.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    conn.set_authorizer(_authorizer)
    return conn


def _open_error_class(exc: BaseException) -> str:
    """``not_a_database`` for a file SQLite cannot read as a database, else ``db_not_found``."""
    msg = str(exc).lower()
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in msg or "malformed" in msg or "encrypted" in msg):
        return "not_a_database"
    return "db_not_found"


def classify_error(exc: BaseException) -> str:
    """Error class (one of :data:`ERROR_CLASSES`) for an exception raised by a query."""
    msg = str(exc).lower()
    if "file is not a database" in msg or "database disk image is malformed" in msg:
        return "not_a_database"
    if isinstance(exc, sqlite3.OperationalError) and "interrupted" in msg:
        return "timeout"
    if "not authorized" in msg or "authorization denied" in msg or "attempt to write a readonly" in msg:
        return "not_authorized"
    if "one statement at a time" in msg:
        return "multiple_statements"
    if "syntax error" in msg or "incomplete input" in msg or "unrecognized token" in msg:
        return "syntax_error"
    if "no such table" in msg:
        return "no_such_table"
    if "no such column" in msg:
        return "no_such_column"
    if isinstance(exc, sqlite3.Error):
        return "runtime_error"
    return "internal_error"


class _TooManyRows(Exception):
    pass


def run_query(conn: sqlite3.Connection, sql: str, *, timeout_s: float, max_rows: int) -> list[tuple]:
    """Run one query with a time limit; returns all rows (raises sqlite3 errors / _TooManyRows)."""
    deadline = time.perf_counter() + timeout_s
    conn.set_progress_handler(lambda: 1 if time.perf_counter() > deadline else 0, 1000)
    try:
        cur = conn.execute(sql)
        rows = cur.fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            raise _TooManyRows()
        return rows
    finally:
        conn.set_progress_handler(None, 0)


def gold_is_ordered(gold_sql: str) -> bool:
    """True when the gold query has a top-level ORDER BY (then row order must match)."""
    try:
        import sqlglot  # the SQL parser used across fastdistill.curation

        tree = sqlglot.parse_one(gold_sql, read="sqlite")
        return tree is not None and tree.args.get("order") is not None
    except Exception:
        # Unparseable by sqlglot: fall back to an ORDER BY outside any parentheses.
        depth, top = 0, []
        for ch in gold_sql:
            depth += ch == "("
            depth -= ch == ")"
            top.append(ch if depth == 0 else " ")
        return re.search(r"\border\s+by\b", "".join(top), re.IGNORECASE) is not None


def _norm(v):
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, float):
        return round(v, 9)
    return v


def results_match(pred_rows: list[tuple], gold_rows: list[tuple], ordered: bool) -> bool:
    """Compare two result sets: as lists when ``ordered``, else as multisets of rows."""
    p = [tuple(_norm(v) for v in r) for r in pred_rows]
    g = [tuple(_norm(v) for v in r) for r in gold_rows]
    return p == g if ordered else Counter(p) == Counter(g)


def eval_one(conn_or_path, pred_sql: str | None, gold_sql: str | None, *, timeout_s: float = 5.0,
             max_rows: int = 100_000) -> dict:
    """Evaluate one row. Returns ``{"exec_match", "exec_error", "exec_time_s"}``; never raises."""
    out = {"exec_match": False, "exec_error": None, "exec_time_s": 0.0}
    if not pred_sql or not gold_sql or conn_or_path is None:
        out["exec_error"] = "missing_input"
        return out
    try:
        conn = conn_or_path if isinstance(conn_or_path, sqlite3.Connection) else open_readonly(conn_or_path)
    except (FileNotFoundError, sqlite3.Error, OSError) as exc:
        out["exec_error"] = _open_error_class(exc)
        return out
    try:
        try:
            gold = run_query(conn, gold_sql, timeout_s=timeout_s, max_rows=max_rows)
        except _TooManyRows:
            out["exec_error"] = "gold_error:too_many_rows"
            return out
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error class
            out["exec_error"] = "gold_error:" + classify_error(exc)
            return out
        t0 = time.perf_counter()
        try:
            pred = run_query(conn, pred_sql, timeout_s=timeout_s, max_rows=max_rows)
        except _TooManyRows:
            out["exec_error"] = "too_many_rows"
            return out
        except Exception as exc:  # noqa: BLE001
            out["exec_error"] = classify_error(exc)
            return out
        finally:
            out["exec_time_s"] = time.perf_counter() - t0
        out["exec_match"] = results_match(pred, gold, gold_is_ordered(gold_sql))
        return out
    except Exception as exc:  # noqa: BLE001 - never raise out of a row
        logger.warning("sqlite_exec_eval: unexpected %s: %s", type(exc).__name__, exc)
        out["exec_error"] = "internal_error"
        return out
    finally:
        if conn is not conn_or_path:
            conn.close()


def sqlite_exec_eval_rows(batch: dict, *, db_column: str = "db_path", pred_column: str = "pred_sql",
                          gold_column: str = "gold_sql", timeout_s: float = 5.0, max_rows: int = 100_000,
                          db_root: str | None = None) -> dict:
    """Batched row function: evaluates every row of a python-format batch; returns the new columns."""
    for c in (db_column, pred_column, gold_column):
        if c not in batch:
            raise KeyError(f"sqlite_exec_eval: column {c!r} missing (columns: {list(batch)})")
    n = len(batch[pred_column])
    cols = {"exec_match": [], "exec_error": [], "exec_time_s": []}
    conns: dict[str, sqlite3.Connection | None] = {}
    open_errors: dict[str, str] = {}
    try:
        for i in range(n):
            db = batch[db_column][i]
            conn = None
            if db:
                path = os.path.join(db_root, db) if db_root and not os.path.isabs(db) else db
                if path not in conns:
                    try:
                        conns[path] = open_readonly(path)
                    except (FileNotFoundError, sqlite3.Error, OSError) as exc:
                        conns[path] = None
                        open_errors[path] = _open_error_class(exc)
                conn = conns[path]
                if conn is None:
                    r = {"exec_match": False, "exec_error": open_errors[path], "exec_time_s": 0.0}
                    for k in cols:
                        cols[k].append(r[k])
                    continue
            r = eval_one(conn, batch[pred_column][i], batch[gold_column][i], timeout_s=timeout_s, max_rows=max_rows)
            for k in cols:
                cols[k].append(r[k])
    finally:
        for conn in conns.values():
            if conn is not None:
                conn.close()
    return cols


def sqlite_exec_eval(ds, *, db_column: str = "db_path", pred_column: str = "pred_sql", gold_column: str = "gold_sql",
                     timeout_s: float = 5.0, num_proc: int | None = None, max_rows: int = 100_000,
                     db_root: str | None = None, batch_size: int = 64):
    """Run predicted and gold SQL on each row's SQLite database and add the comparison columns.

    Adds ``exec_match`` (bool), ``exec_error`` (error class from :data:`ERROR_CLASSES` or None) and
    ``exec_time_s`` (seconds spent on the predicted query). Databases are opened read-only and
    guarded (see the module docstring); each query is interrupted after ``timeout_s``. Rows keep
    their order and other columns; a bad row never raises. Relative ``db_path`` values are resolved
    against ``db_root`` when given.
    """
    import datasets

    from fastdistill.curation._params import check_step_params

    check_step_params("sqlite_exec_eval", timeout_s=timeout_s, num_proc=num_proc, max_rows=max_rows, db_root=db_root,
                      batch_size=batch_size)
    for c in (db_column, pred_column, gold_column):
        if c not in ds.column_names:
            raise KeyError(f"sqlite_exec_eval: column {c!r} missing (columns: {ds.column_names})")
    features = ds.features.copy()
    features["exec_match"] = datasets.Value("bool")
    features["exec_error"] = datasets.Value("string")
    features["exec_time_s"] = datasets.Value("float64")
    if len(ds) == 0:
        return empty_output(ds, features)
    out = ds.with_format(None).map(
        sqlite_exec_eval_rows, batched=True, batch_size=batch_size, num_proc=num_proc, features=features,
        fn_kwargs=dict(db_column=db_column, pred_column=pred_column, gold_column=gold_column, timeout_s=timeout_s,
                       max_rows=max_rows, db_root=db_root),
        desc="sqlite_exec_eval")
    return restore_format(out, ds)

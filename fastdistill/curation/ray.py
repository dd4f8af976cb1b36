"""The curation steps on Ray Data, for data that outgrows one machine (``pip install 'fastdistill[ray]'``).

Every step here takes and returns a ``ray.data.Dataset`` and runs the *same* batched row functions
as the ``datasets`` steps, through ``map_batches(batch_format="pyarrow")``: canonicalize / hash /
filter / score / execute per batch on the Ray workers, with no second implementation of any step.
The global decisions run in the driver on the smallest input that decides them, with the same
functions as the ``datasets`` path:

* exact dedup: the driver gathers ``(row index, hash)`` -- about 80 bytes a row for the hex
  ``hash`` of :func:`compute_hash` -- and keeps the first row of each value with
  :func:`fastdistill.curation.dedup.first_occurrence_arrow`;
* MinHash dedup: the workers compute the LSH band keys of every row
  (:func:`fastdistill.curation.dedup.minhash_band_keys`, 64 bytes a row), the driver finds the rows
  that share a band with another row (:func:`~fastdistill.curation.dedup.minhash_candidates`),
  fetches only those texts and runs the ordered, verified pass
  (:func:`~fastdistill.curation.dedup.minhash_verified_pass`);
* ``keep_by_score(top_k=...)``: the driver gathers ``(row index, score)``.

Then the kept row indices are broadcast (``ray.put``) and every block is filtered in parallel. Rows
are identified by an index column (``__row__``, added by :func:`from_dataset` /
:func:`add_row_index`), so the kept rows, their content and their order (by that index) are
identical to the ``datasets`` path on the same rows. Reports and the manifest are written by the
same code (:mod:`fastdistill.curation.reports`) from :func:`to_dataset`.

Connect to a cluster with ``ray.init(address="auto")`` (or ``"ray://head:10001"``) before calling
these functions; without it Ray starts a local instance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastdistill.curation._ds import add_arrow_columns
from fastdistill.curation.canonical import _as_columns, _check_options, canonicalize_arrow, hash_arrow
from fastdistill.curation.dedup import (
    band_keys_from_arrow,
    band_keys_to_arrow,
    first_occurrence_arrow,
    minhash_band_keys,
    minhash_candidates,
    minhash_verified_pass,
    uses_prefilter,
)

logger = logging.getLogger(__name__)

INDEX_COLUMN = "__row__"
_BAND_KEYS = "__minhash_band_keys"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the Ray engine needs Ray Data: pip install 'fastdistill[ray]'") from exc
    return ray


# ----------------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------------

def from_dataset(ds, *, index_column: str = INDEX_COLUMN, override_num_blocks: int | None = None):
    """A ``ray.data.Dataset`` with the rows of a ``datasets.Dataset`` (or Arrow table) plus an int64
    ``index_column`` 0..n-1 that identifies each row through the steps."""
    ray = _ray()
    table = ds if isinstance(ds, pa.Table) else ds.with_format("arrow")[:]
    if index_column in table.column_names:
        raise ValueError(f"column {index_column!r} already exists")
    table = table.append_column(index_column, pa.array(np.arange(len(table), dtype=np.int64)))
    if override_num_blocks and override_num_blocks > 1 and len(table):
        step = -(-len(table) // override_num_blocks)
        return ray.data.from_arrow([table.slice(o, step) for o in range(0, len(table), step)])
    return ray.data.from_arrow(table)


def add_row_index(rds, *, index_column: str = INDEX_COLUMN):
    """Add an increasing int64 ``index_column`` to a Ray dataset read from files (``read_parquet``,
    ``read_json``...): Ray's ``monotonically_increasing_id``, increasing in the dataset's order
    (not contiguous). Keep-first decisions follow this index."""
    _ray()
    from ray.data.expressions import monotonically_increasing_id

    return rds.with_column(index_column, monotonically_increasing_id())


def to_table(rds, *, index_column: str = INDEX_COLUMN, keep_index: bool = False) -> pa.Table:
    """All rows in the driver as one Arrow table, sorted by ``index_column`` (dropped unless ``keep_index``)."""
    ray = _ray()
    tables = [t for t in ray.get(rds.to_arrow_refs()) if t.num_rows]
    if not tables:
        table = rds.schema().base_schema.empty_table() if rds.schema() is not None else pa.table({})
    else:
        table = pa.concat_tables(tables, promote_options="permissive")
    if index_column in table.column_names:
        table = table.take(pc.sort_indices(table[index_column]))
        if not keep_index:
            table = table.drop_columns([index_column])
    return table


def to_dataset(rds, *, index_column: str = INDEX_COLUMN):
    """The rows as a ``datasets.Dataset`` in index order, without the index column (for writing
    the output, the manifest and the reports with the ``datasets`` code)."""
    import datasets

    return datasets.Dataset(to_table(rds, index_column=index_column))


def _gather(rds, columns: Sequence[str], index_column: str) -> pa.Table:
    """``columns`` (+ the index) of every row in the driver, in index order."""
    return to_table(rds.select_columns([index_column, *columns]), index_column=index_column, keep_index=True)


# ----------------------------------------------------------------------------------------------
# per-batch steps
# ----------------------------------------------------------------------------------------------

class _ArrowStep:
    """``table -> table`` with the new columns of ``fn(table)`` (a picklable callable for map_batches)."""

    def __init__(self, fn: Callable[[pa.Table], dict]):
        self.fn = fn

    def __call__(self, table: pa.Table) -> pa.Table:
        return add_arrow_columns(table, self.fn(table))


def _map(rds, fn: Callable[[pa.Table], dict], batch_size: int | None):
    return rds.map_batches(_ArrowStep(fn), batch_format="pyarrow", batch_size=batch_size, zero_copy_batch=True)


class _Canonical:
    def __init__(self, out_column, cols, opts):
        self.out_column, self.cols, self.opts = out_column, cols, opts

    def __call__(self, table):
        return {self.out_column: canonicalize_arrow(table, self.cols, **self.opts)}


class _Hash:
    def __init__(self, out_column, cols, opts):
        self.out_column, self.cols, self.opts = out_column, cols, opts

    def __call__(self, table):
        return {self.out_column: hash_arrow(table, self.cols, **self.opts)}


def canonicalize(rds, columns: str | Sequence[str], *, out_column: str = "canonical", whitespace: str = "collapse",
                 lowercase: bool = False, sql: bool = False, batch_size: int | None = 10_000):
    """:func:`fastdistill.curation.canonicalize` on a Ray dataset (``canonicalize_arrow`` per batch)."""
    _check_options(whitespace)
    return _map(rds, _Canonical(out_column, _as_columns(columns), dict(whitespace=whitespace, lowercase=lowercase,
                                                                       sql=sql)), batch_size)


def compute_hash(rds, columns: str | Sequence[str], *, out_column: str = "hash", canonical: bool = True,
                 whitespace: str = "collapse", lowercase: bool = False, sql: bool = False,
                 batch_size: int | None = 10_000):
    """:func:`fastdistill.curation.compute_hash` on a Ray dataset (``hash_arrow`` per batch)."""
    _check_options(whitespace)
    return _map(rds, _Hash(out_column, _as_columns(columns), dict(canonical=canonical, whitespace=whitespace,
                                                                  lowercase=lowercase, sql=sql)), batch_size)


class _PythonRows:
    """A python-format batched row function (``dict of lists -> dict of lists``) on Arrow batches."""

    def __init__(self, fn, types: dict, kwargs: dict):
        self.fn, self.types, self.kwargs = fn, types, kwargs

    def __call__(self, table):
        new = self.fn(table.to_pydict(), **self.kwargs)
        return {k: pa.array(v, type=self.types.get(k)) for k, v in new.items()}


def rule_filter(rds, column: str, *, mode: str = "drop", reason_column: str = "rule_reason",
                batch_size: int | None = 1_000, **rules):
    """:func:`fastdistill.curation.rule_filter` on a Ray dataset (``rule_filter_rows`` per batch).

    ``rules`` are those of :func:`fastdistill.curation.filters.rule_reason` (and ``predicate_on_row``).
    ``mode="drop"`` keeps the rows that pass; ``"mark"`` adds ``reason_column``.
    """
    from fastdistill.curation.filters import rule_filter_rows

    if mode not in ("drop", "mark"):
        raise ValueError(f"mode must be 'drop' or 'mark', got {mode!r}")
    marked = _map(rds, _PythonRows(rule_filter_rows, {reason_column: pa.string()},
                                   dict(column=column, out_column=reason_column, **rules)), batch_size)
    if mode == "mark":
        return marked
    return marked.map_batches(_DropMarked(reason_column), batch_format="pyarrow", batch_size=None)


class _DropMarked:
    """Keep the rows whose reason is null, without the reason column."""

    def __init__(self, reason_column):
        self.reason_column = reason_column

    def __call__(self, table):
        return table.filter(pc.is_null(table[self.reason_column])).drop_columns([self.reason_column])


def clean_sql_output(rds, column: str = "completion", *, out_column: str = "pred_sql", batch_size: int | None = 1_000):
    """:func:`fastdistill.curation.clean_sql_output` on a Ray dataset."""
    from fastdistill.curation.filters import clean_sql_output_rows

    return _map(rds, _PythonRows(clean_sql_output_rows, {out_column: pa.string()},
                                 dict(column=column, out_column=out_column)), batch_size)


def sqlite_exec_eval(rds, *, batch_size: int | None = 64, **kwargs):
    """:func:`fastdistill.curation.sqlite_exec_eval` on a Ray dataset (the databases must be readable
    at the same path on every worker)."""
    from fastdistill.curation.sql_eval import sqlite_exec_eval_rows

    types = {"exec_match": pa.bool_(), "exec_error": pa.string(), "exec_time_s": pa.float64()}
    return _map(rds, _PythonRows(sqlite_exec_eval_rows, types, kwargs), batch_size)


def tests_exec_eval(rds, *, batch_size: int | None = 8, **kwargs):
    """:func:`fastdistill.curation.tests_exec_eval` on a Ray dataset (sandboxed runs on the workers)."""
    from fastdistill.curation.tests_eval import tests_exec_eval_rows

    types = {"tests_passed": pa.bool_(), "tests_n_passed": pa.int64(), "tests_n_failed": pa.int64(),
             "tests_timed_out": pa.bool_(), "tests_time_s": pa.float64(), "tests_error": pa.string(),
             "kill_rate": pa.float64()}
    return _map(rds, _PythonRows(tests_exec_eval_rows, types, kwargs), batch_size)


class _Score:
    def __init__(self, out_column, weights):
        self.out_column, self.weights = out_column, weights

    def __call__(self, table):
        from fastdistill.curation.scoring import score_arrow

        return {self.out_column: score_arrow(table, self.weights)}


def score_from_exec_eval(rds, *, out_column: str = "score", weights: dict | None = None,
                         batch_size: int | None = 10_000):
    """:func:`fastdistill.curation.score_from_exec_eval` on a Ray dataset (``score_arrow`` per batch)."""
    return _map(rds, _Score(out_column, weights), batch_size)


# ----------------------------------------------------------------------------------------------
# global decisions
# ----------------------------------------------------------------------------------------------

class _ByIndex:
    """Keep (or mark) rows by their index: ``kept`` sorted indices, ``cluster`` optional per-index cluster."""

    def __init__(self, index_column, index_ref, keep_ref, cluster_ref, mode, mark_column, cluster_column):
        self.index_column, self.mode = index_column, mode
        self.mark_column, self.cluster_column = mark_column, cluster_column
        self.refs = (index_ref, keep_ref, cluster_ref)

    def __call__(self, table: pa.Table) -> pa.Table:
        import ray

        index, keep, cluster = (ray.get(r) if r is not None else None for r in self.refs)
        pos = np.searchsorted(index, table[self.index_column].to_numpy())
        new = {}
        if self.mode == "mark":
            new[self.mark_column] = pa.array(~keep[pos])
        if self.cluster_column:
            new[self.cluster_column] = pa.array(cluster[pos])
        if new:
            table = add_arrow_columns(table, new)
        if self.mode == "drop":
            table = table.filter(pa.array(keep[pos]))
        return table


def _apply_decision(rds, index: np.ndarray, keep: np.ndarray, cluster: np.ndarray | None, *, mode: str,
                    index_column: str, mark_column: str = "is_duplicate", cluster_column: str | None = None):
    ray = _ray()
    refs = (ray.put(index), ray.put(keep), ray.put(cluster) if cluster is not None else None)
    return rds.map_batches(_ByIndex(index_column, *refs, mode, mark_column, cluster_column),
                           batch_format="pyarrow", batch_size=None)


class _BandKeys:
    def __init__(self, column, ngram, seed):
        self.column, self.ngram, self.seed = column, ngram, seed

    def __call__(self, table):
        return {_BAND_KEYS: band_keys_to_arrow(minhash_band_keys(table[self.column], ngram=self.ngram,
                                                                 seed=self.seed))}


def deduplicate(rds, column: str, *, method: str = "exact", threshold: float = 0.8, mode: str = "drop",
                num_perm: int = 128, ngram: int = 5, seed: int = 42, tokenizer: str = "words",
                cluster_column: str | None = None, backend: str | None = None, mark_column: str = "is_duplicate",
                index_column: str = INDEX_COLUMN, batch_size: int | None = 10_000):
    """:func:`fastdistill.curation.deduplicate` on a Ray dataset: the first occurrence by
    ``index_column`` is kept, with the same decision functions as the ``datasets`` path (see the
    module docstring for what runs where). ``cluster_id`` values are ``index_column`` values."""
    if mode not in ("drop", "mark"):
        raise ValueError(f"mode must be 'drop' or 'mark', got {mode!r}")
    if method == "exact":
        table = _gather(rds, [column], index_column)
        keep, cluster = first_occurrence_arrow(table[column])
    elif method == "minhash":
        if uses_prefilter(tokenizer, threshold):
            keyed = _map(rds.select_columns([index_column, column]), _BandKeys(column, ngram, seed), batch_size)
            keys_table = _gather(keyed, [_BAND_KEYS], index_column)
            index = keys_table[index_column].to_numpy()
            rows = np.flatnonzero(minhash_candidates(band_keys_from_arrow(keys_table[_BAND_KEYS])))
            del keys_table
            wanted = _ray().put(index[rows])
            texts = _gather(rds.select_columns([index_column, column]).map_batches(
                _Isin(index_column, wanted), batch_format="pyarrow", batch_size=None), [column], index_column)
            table = pa.table({index_column: pa.array(index)})
        else:
            table = _gather(rds, [column], index_column)
            index = table[index_column].to_numpy()
            rows, texts = np.arange(len(index)), table
        dup, sub_cluster, used = minhash_verified_pass(texts[column], rows, threshold=threshold, num_perm=num_perm,
                                                       ngram=ngram, seed=seed, tokenizer=tokenizer, backend=backend)
        keep = np.ones(len(index), dtype=bool)
        cluster = np.arange(len(index), dtype=np.int64)
        keep[rows[dup]] = False
        cluster[rows] = sub_cluster
    else:
        raise ValueError(f"method must be 'exact' or 'minhash', got {method!r}")
    index = table[index_column].to_numpy()
    logger.info("ray deduplicate(%s, method=%s): %d of %d rows are duplicates", column, method,
                int(len(keep) - keep.sum()), len(keep))
    return _apply_decision(rds, index, keep, index[cluster] if cluster_column else None, mode=mode,
                           index_column=index_column, mark_column=mark_column, cluster_column=cluster_column)


class _Isin:
    def __init__(self, index_column, ref):
        self.index_column, self.ref = index_column, ref

    def __call__(self, table):
        import ray

        wanted = ray.get(self.ref)
        idx = table[self.index_column].to_numpy()
        if not len(wanted):
            return table.slice(0, 0)
        pos = np.minimum(np.searchsorted(wanted, idx), len(wanted) - 1)
        return table.filter(pa.array(wanted[pos] == idx))


def keep_by_score(rds, *, min_score: float = 0.5, column: str = "score", top_k: int | None = None,
                  index_column: str = INDEX_COLUMN):
    """:func:`fastdistill.curation.keep_by_score` on a Ray dataset (same positions function)."""
    from fastdistill.curation.scoring import kept_positions

    table = _gather(rds, [column], index_column)
    index = table[index_column].to_numpy()
    keep = np.zeros(len(index), dtype=bool)
    keep[kept_positions(table[column], min_score=min_score, top_k=top_k)] = True
    logger.info("ray keep_by_score(%s >= %s): keeping %d of %d rows", column, min_score, int(keep.sum()), len(keep))
    return _apply_decision(rds, index, keep, None, mode="drop", index_column=index_column)


STEPS = {
    "canonicalize": canonicalize,
    "compute_hash": compute_hash,
    "deduplicate": deduplicate,
    "rule_filter": rule_filter,
    "clean_sql_output": clean_sql_output,
    "sqlite_exec_eval": sqlite_exec_eval,
    "tests_exec_eval": tests_exec_eval,
    "score_from_exec_eval": score_from_exec_eval,
    "keep_by_score": keep_by_score,
}
"""The Ray version of each ``fastdistill curate`` step (same names and parameters; ``num_proc`` is
ignored: Ray schedules the batches on the cluster's CPUs)."""


class RayEngine:
    """What ``fastdistill curate --engine ray`` needs around the steps (used by the curate runner)."""

    steps = STEPS

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)

    @staticmethod
    def prepare(ds):
        return from_dataset(ds).materialize()

    @staticmethod
    def run(fn, rds, call: dict):
        call = {k: v for k, v in call.items() if k != "num_proc"}  # Ray schedules batches on the cluster
        return fn(rds, **call).materialize()

    @staticmethod
    def length(rds) -> int:
        return rds.count()

    @staticmethod
    def column(rds, name: str) -> pa.ChunkedArray:
        return _gather(rds, [name], INDEX_COLUMN)[name]

    @staticmethod
    def drop_marked(rds, reason_column: str):
        return rds.map_batches(_DropMarked(reason_column), batch_format="pyarrow", batch_size=None).materialize()

    @staticmethod
    def finish(rds):
        return to_dataset(rds)

"""Small helpers shared by the curation steps (internal)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import datasets
import pyarrow as pa
from datasets.fingerprint import Hasher
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 10_000


def restore_format(out: datasets.Dataset, like: datasets.Dataset) -> datasets.Dataset:
    """Give ``out`` the output format of ``like`` (steps must not change what users get from ``ds[i]``)."""
    fmt = like.format
    columns = fmt["columns"]
    if columns is None or set(columns) >= set(like.column_names):
        columns = None  # the format showed every column: keep showing every column, new ones included
    else:
        columns = [c for c in columns if c in out.column_names]
    if fmt["type"] is None and columns is None:
        return out.with_format(None)
    return out.with_format(fmt["type"], columns=columns, output_all_columns=fmt["output_all_columns"],
                           **fmt["format_kwargs"])


def add_arrow_columns(table: pa.Table, new: dict) -> pa.Table:
    """``table`` with the arrays of ``new`` appended (or replacing the columns of the same name).

    The one way every engine attaches a step's new columns to a batch (``datasets.map`` here, Ray
    Data's ``map_batches`` in :mod:`fastdistill.curation.ray`)."""
    for name, arr in new.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


def thread_count() -> int:
    """Threads for the batch loop of a one-process step: the CPUs this process may use (at most 8).

    Arrow's compute kernels and numpy release the GIL, so the canonicalization and hashing of
    several batches run on several cores at once, without copying data between processes."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _threaded_map(fn, batches, threads: int):
    """``(len(batch), fn(batch))`` for each batch, in order, with at most ``2 * threads`` batches in flight."""
    if threads <= 1:
        for batch in batches:
            yield len(batch), fn(batch)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append((len(batch), pool.submit(fn, batch)))
            if len(pending) >= 2 * threads:
                n, fut = pending.popleft()
                yield n, fut.result()
        while pending:
            n, fut = pending.popleft()
            yield n, fut.result()


def map_arrow_columns(ds: datasets.Dataset, fn: Callable[[pa.Table], dict[str, pa.Array]], *, num_proc: int | None,
                      batch_size: int = DEFAULT_BATCH_SIZE, desc: str | None = None,
                      input_columns: list[str] | None = None, params: dict | None = None) -> datasets.Dataset:
    """``ds.map`` on Arrow batches: ``fn(table) -> {name: array}`` adds (or replaces) columns.

    With ``num_proc > 1`` this is datasets' own ``map(batched=True, num_proc=...)``. In one process
    the new columns are computed batch by batch (several batches at once on :func:`thread_count`
    threads; ``fn`` must be thread-safe, as pure Arrow/numpy functions are) and attached with ``add_column`` (existing columns
    are not copied); the new fingerprint is derived from the input fingerprint, ``desc`` and
    ``params`` (the step's options), so it is deterministic without hashing the data.
    """

    def apply(table: pa.Table) -> pa.Table:
        return add_arrow_columns(table, fn(table.select(input_columns) if input_columns else table))

    if len(ds) == 0:
        # datasets' map never calls fn on an empty dataset, so the new columns would be missing:
        # compute them on the empty table instead (a step keeps its output schema on empty input).
        empty = ds.data.table.schema.empty_table()
        from datasets.table import InMemoryTable

        return restore_format(datasets.Dataset(InMemoryTable(apply(empty)), split=ds.split), ds)
    if num_proc and num_proc > 1:
        out = ds.with_format("arrow").map(apply, batched=True, batch_size=batch_size, num_proc=num_proc, desc=desc)
        return restore_format(out, ds)
    # One process: compute only the new columns batch by batch and attach them with add_column, so the
    # existing columns are not rewritten (datasets' map would copy every column of every batch).
    parts: dict[str, list] = {}
    with tqdm(total=len(ds), desc=desc, unit="rows", disable=len(ds) < 100_000) as bar:
        for batch_len, new in _threaded_map(fn, arrow_batches(ds, input_columns, batch_size), thread_count()):
            for name, arr in new.items():
                parts.setdefault(name, []).append(arr)
            bar.update(batch_len)
    columns = {name: pa.chunked_array([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in chunks])
               for name, chunks in parts.items()}
    return add_columns(ds, columns, desc=desc or "map", params=params)


def arrow_batches(ds: datasets.Dataset, columns: list[str] | None, batch_size: int):
    """The rows of ``ds`` as Arrow tables of ``batch_size`` rows (only ``columns`` if given), in order.

    Without an indices mapping these are zero-copy slices of the stored table; with one, each batch
    is one Arrow ``take`` (``Dataset.iter`` would gather and cast every contiguous run separately)."""
    table = ds.data.table
    if columns:
        table = table.select(columns)
    indices = getattr(ds, "_indices", None)
    for off in range(0, len(ds), batch_size):
        if indices is None:
            yield table.slice(off, batch_size)
        else:
            yield table.take(indices.column(0).slice(off, batch_size))


def empty_output(ds: datasets.Dataset, features: datasets.Features) -> datasets.Dataset:
    """The output of a row-mapping step for an empty ``ds``: no rows, but every column of ``features``.

    ``Dataset.map`` does not run the function on an empty dataset, so its new columns would be
    missing and a later step would fail with "column not in the dataset"; this keeps the schema.
    """
    out = datasets.Dataset.from_dict({name: [] for name in features}, features=features, split=ds.split)
    return restore_format(out, ds)


def arrow_column(ds: datasets.Dataset, name: str) -> pa.ChunkedArray:
    """One column of ``ds`` as an Arrow ChunkedArray, honouring any indices mapping (select/filter)."""
    if name not in ds.column_names:
        raise KeyError(f"column {name!r} not in the dataset (columns: {ds.column_names})")
    if not len(ds):
        return pa.chunked_array([], ds.data.schema.field(name).type)
    column = ds.data.column(name)
    if getattr(ds, "_indices", None) is not None:
        # one Arrow take over the indices mapping; datasets' own gather casts every contiguous run
        # of rows separately (thousands of tiny chunks after a dedup), which costs per row
        column = column.take(ds._indices.column(0))
    return rechunk(column)


def rechunk(column: pa.ChunkedArray, min_rows: int = 1 << 16) -> pa.ChunkedArray:
    """``column`` with runs of small chunks concatenated into chunks of at least ``min_rows`` rows.

    Reading a column through an indices mapping (after ``select``/``filter``/dedup) gives one chunk
    per contiguous run of rows, often one per row; per-chunk work would then cost per row."""
    if column.num_chunks <= max(1, len(column) // min_rows):
        return column
    out, group, size = [], [], 0
    for chunk in column.chunks:
        if len(chunk) >= min_rows and not group:
            out.append(chunk)
            continue
        group.append(chunk)
        size += len(chunk)
        if size >= min_rows:
            out.append(pa.concat_arrays(group))
            group, size = [], 0
    if group:
        out.append(pa.concat_arrays(group))
    return pa.chunked_array(out, column.type)


def select_rows(ds: datasets.Dataset, rows, *, desc: str, params: dict | None = None) -> datasets.Dataset:
    """``ds.select(rows)`` for sorted, distinct row positions (a numpy int array), without Python objects per row.

    ``Dataset.select`` turns a numpy array into a Python list (one ``int`` per row) before building
    its indices mapping; here the mapping (an in-memory ``uint64`` Arrow table, composed with an
    existing one) is built from the numpy array directly. A contiguous run is a slice, as in
    ``select``. The fingerprint is derived from the input fingerprint, ``desc``, ``params`` and the
    rows, so it is deterministic. Datasets with attached indexes go through ``select`` (which refuses them).
    """
    import numpy as np
    from datasets.table import InMemoryTable

    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    if n == len(ds):
        return ds
    if n == 0 or rows[-1] - rows[0] + 1 == n:  # empty or contiguous: select slices the table
        return ds.select(range(int(rows[0]), int(rows[0]) + n) if n else [])
    if ds.list_indexes() or not hasattr(ds, "_indices"):
        return ds.select(rows)
    if rows[0] < 0 or rows[-1] >= len(ds):
        raise IndexError(f"row positions out of range for a dataset of {len(ds)} rows")
    indices = pa.array(rows.astype(np.uint64))
    if ds._indices is not None:
        indices = ds._indices.column(0).take(indices).combine_chunks()
    fingerprint = Hasher.hash([ds._fingerprint, desc, repr(sorted((params or {}).items())), rows])
    out = datasets.Dataset(ds.data, info=ds.info.copy(), split=ds.split,
                           indices_table=InMemoryTable(pa.table({"indices": indices})), fingerprint=fingerprint)
    return restore_format(out, ds)


def add_columns(ds: datasets.Dataset, columns: dict, *, desc: str, params: dict | None = None) -> datasets.Dataset:
    """``ds`` plus the columns ``{name: array in ds's row order}``, without flattening an indices mapping.

    ``Dataset.add_column`` on a dataset with an indices mapping (after ``select``/dedup) first rewrites
    every column (``flatten_indices``). When the mapping names each stored row at most once, the new
    columns are instead written in *storage* order (rows outside the mapping get nulls) and the
    mapping is kept, so nothing else is copied. Other cases use ``add_column``.
    """
    import numpy as np
    from datasets.table import InMemoryTable, concat_tables
    from datasets.arrow_dataset import update_metadata_with_features

    indices = getattr(ds, "_indices", None)
    if indices is not None and len(ds) and not ds.list_indexes():
        idx = indices.column(0).to_numpy()
        if len(np.unique(idx)) == len(idx):
            table = ds.data
            for name, values in columns.items():
                values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
                if isinstance(values, pa.ChunkedArray):
                    values = values.combine_chunks()
                # scatter: storage row idx[i] gets values[i]
                order = np.full(len(table), len(values), dtype=np.int64)
                order[idx] = np.arange(len(values))
                placed = pa.concat_arrays([values, pa.nulls(1, values.type)]).take(pa.array(order))
                if name in table.column_names:
                    table = table.remove_column(table.column_names.index(name))
                table = concat_tables([table, InMemoryTable.from_arrays([placed], names=[name])], axis=1)
            fingerprint = Hasher.hash([ds._fingerprint, desc, sorted(columns), repr(sorted((params or {}).items()))])
            info = ds.info.copy()
            new_features = datasets.Features.from_arrow_schema(pa.schema([table.schema.field(c) for c in columns]))
            info.features = datasets.Features({**{k: v for k, v in ds.features.items() if k not in columns},
                                               **new_features})
            table = update_metadata_with_features(table, info.features)
            out = datasets.Dataset(table, info=info, split=ds.split, indices_table=indices, fingerprint=fingerprint)
            return restore_format(out, ds)
    out = ds
    for name, values in columns.items():
        if name in out.column_names:
            out = out.remove_columns(name)
        fingerprint = Hasher.hash([out._fingerprint, desc, name, repr(sorted((params or {}).items()))])
        out = out.add_column(name, values, new_fingerprint=fingerprint)
    return restore_format(out, ds)

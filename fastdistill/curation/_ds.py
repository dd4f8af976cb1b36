"""Small helpers shared by the curation steps (internal)."""

from __future__ import annotations

import logging
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


def map_arrow_columns(ds: datasets.Dataset, fn: Callable[[pa.Table], dict[str, pa.Array]], *, num_proc: int | None,
                      batch_size: int = DEFAULT_BATCH_SIZE, desc: str | None = None,
                      input_columns: list[str] | None = None, params: dict | None = None) -> datasets.Dataset:
    """``ds.map`` on Arrow batches: ``fn(table) -> {name: array}`` adds (or replaces) columns.

    With ``num_proc > 1`` this is datasets' own ``map(batched=True, num_proc=...)``. In one process
    the new columns are computed batch by batch and attached with ``add_column`` (existing columns
    are not copied); the new fingerprint is derived from the input fingerprint, ``desc`` and
    ``params`` (the step's options), so it is deterministic without hashing the data.
    """

    def apply(table: pa.Table) -> pa.Table:
        sub = table.select(input_columns) if input_columns else table
        for name, arr in fn(sub).items():
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, arr)
            else:
                table = table.append_column(name, arr)
        return table

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
    source = ds.with_format("arrow", columns=input_columns) if input_columns else ds.with_format("arrow")
    with tqdm(total=len(ds), desc=desc, unit="rows", disable=len(ds) < 100_000) as bar:
        for batch in source.iter(batch_size):
            for name, arr in fn(batch).items():
                parts.setdefault(name, []).append(arr)
            bar.update(len(batch))
    out = ds
    for name, chunks in parts.items():
        column = pa.chunked_array([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in chunks])
        if name in out.column_names:
            out = out.remove_columns(name)
        fingerprint = Hasher.hash([out._fingerprint, desc, name, repr(sorted((params or {}).items()))])
        out = out.add_column(name, column, new_fingerprint=fingerprint)
    return restore_format(out, ds)


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
    return ds.with_format("arrow", columns=[name])[:][name] if len(ds) else pa.chunked_array([], ds.data.schema.field(name).type)


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

"""Turn execution results into one score per row, and keep the rows that score well."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastdistill.curation._ds import arrow_column

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = {"pass": 0.5, "kill_rate": 0.5}


def score_arrow(table: pa.Table, weights: dict | None = None) -> pa.Array:
    """Score per row from the columns of :func:`sqlite_exec_eval` and/or :func:`tests_exec_eval`.

    * SQL rows (``exec_match``): 1.0 on a match, else 0.0.
    * test rows (``tests_passed``): 0.0 unless the tests pass, else ``w_pass + w_kill * kill_rate``
      (``kill_rate`` missing counts as 0); default weights 0.5/0.5, so the range is [0, 1].
    * with both, the mean of the two. A row with neither result gets a null score.
    """
    if weights:
        from fastdistill.curation._params import check_step_params

        check_step_params("score_from_exec_eval", weights=weights)
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    parts = []
    if "exec_match" in table.column_names:
        parts.append(pc.if_else(pc.fill_null(table["exec_match"], False), 1.0, 0.0))
    if "tests_passed" in table.column_names:
        kill = table["kill_rate"] if "kill_rate" in table.column_names else pa.nulls(len(table), pa.float64())
        kill = pc.fill_null(pc.cast(kill, pa.float64()), 0.0)
        passed = pc.fill_null(table["tests_passed"], False)
        parts.append(pc.if_else(passed, pc.add(w["pass"], pc.multiply(w["kill_rate"], kill)), 0.0))
    if not parts:
        raise KeyError("score_from_exec_eval: no execution columns (exec_match or tests_passed); "
                       "run sqlite_exec_eval or tests_exec_eval first")
    total = parts[0]
    for p in parts[1:]:
        total = pc.add(total, p)
    return pc.divide(pc.cast(total, pa.float64()), float(len(parts)))


def score_from_exec_eval(ds, *, out_column: str = "score", weights: dict | None = None, num_proc: int | None = None):
    """Add ``out_column`` (float in [0, 1]) computed by :func:`score_arrow` on Arrow batches.

    ``weights`` may only name ``pass`` and ``kill_rate`` (finite, >= 0, not both 0); anything else is a
    ``ValueError`` before any row is scored.
    """
    from fastdistill.curation._ds import map_arrow_columns
    from fastdistill.curation._params import check_step_params

    check_step_params("score_from_exec_eval", weights=weights, out_column=out_column, num_proc=num_proc)

    return map_arrow_columns(ds, lambda t: {out_column: score_arrow(t, weights)}, num_proc=num_proc,
                             desc="score_from_exec_eval", params=dict(weights=weights))


def kept_positions(scores: pa.Array | pa.ChunkedArray, *, min_score: float = 0.5, top_k: int | None = None
                   ) -> np.ndarray:
    """Positions (increasing) of the rows :func:`keep_by_score` keeps, given the score column in row order."""
    values = pc.fill_null(pc.cast(scores, pa.float64()), -np.inf).to_numpy() if len(scores) else np.zeros(0)
    keep = np.flatnonzero(values >= min_score)
    if top_k is not None and len(keep) > top_k:
        order = np.argsort(-values[keep], kind="stable")[:top_k]
        keep = np.sort(keep[order])
    return keep


def keep_by_score(ds, *, min_score: float = 0.5, column: str = "score", top_k: int | None = None):
    """Keep rows with ``column >= min_score`` (nulls fail), in their original order.

    With ``top_k`` only the ``top_k`` best of those are kept (ties broken by earlier row), still in
    original order. The number of rows dropped is logged.
    """
    from fastdistill.curation._params import check_step_params

    check_step_params("keep_by_score", min_score=min_score, column=column, top_k=top_k)
    keep = kept_positions(arrow_column(ds, column), min_score=min_score, top_k=top_k)
    logger.info("keep_by_score(%s >= %s): keeping %d of %d rows", column, min_score, len(keep), len(ds))
    return ds if len(keep) == len(ds) else ds.select(keep)

"""Load supervised distillation data into TRL's prompt/completion format, with row-level validation."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["load_supervised_dataset", "check_teacher_columns", "TEACHER_COLUMNS"]

PROMPT_FIELDS = ("prompt", "messages")
COMPLETION_FIELDS = ("completion", "chosen", "response")
TEACHER_COLUMNS = ("teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs")


def _read_rows(path_or_rows: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[dict]:
    if isinstance(path_or_rows, (str, os.PathLike)):
        path = os.fspath(path_or_rows)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such dataset file: {path}")
        with open(path, encoding="utf-8") as handle:
            if path.endswith(".jsonl"):
                rows = []
                for line_no, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}: line {line_no} is not valid JSON ({err.msg})") from None
                return rows
            data = json.load(handle)
        if isinstance(data, Mapping) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of rows (or {{'data': [...]}}), got {type(data).__name__}")
        return data
    return [dict(row) if isinstance(row, Mapping) else row for row in path_or_rows]  # _normalise_row names a non-object row


def _as_messages(value: Any, role: str, where: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where} is empty")
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"{where} must be a non-empty string or a list of {{'role', 'content'}} messages, got {value!r:.80}")


def _check_logprobs(values: Any, where: str, nested: bool) -> None:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where} must be a non-empty list of {'lists of ' if nested else ''}floats")
    flat = [x for inner in values for x in inner] if nested else values
    for x in flat:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) or x > 1e-6:
            raise ValueError(f"{where} holds {x!r}; log-probabilities must be numbers <= 0")


def _normalise_row(row: Mapping[str, Any], index: int) -> dict:
    if not isinstance(row, Mapping):
        raise ValueError(f"row {index}: expected an object, got {type(row).__name__}")
    out = dict(row)
    if "messages" in row and "prompt" not in row:
        messages = _as_messages(row["messages"], "user", f"row {index}, field 'messages'")
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"row {index}, field 'messages': the last message must be the assistant's answer")
        out.pop("messages")
        out["prompt"], out["completion"] = messages[:-1], messages[-1:]
    else:
        if "prompt" not in row:
            raise ValueError(f"row {index}: missing field 'prompt' (or 'messages'); fields present: {sorted(row)}")
        field = next((f for f in COMPLETION_FIELDS if f in row), None)
        if field is None:
            raise ValueError(
                f"row {index}: missing the answer; expected one of {list(COMPLETION_FIELDS)}, fields present: {sorted(row)}"
            )
        out["prompt"] = _as_messages(row["prompt"], "user", f"row {index}, field 'prompt'")
        out["completion"] = _as_messages(row[field], "assistant", f"row {index}, field {field!r}")
        if field != "completion":
            out.pop(field)
    if "teacher_logprobs" in row:
        _check_logprobs(row["teacher_logprobs"], f"row {index}, field 'teacher_logprobs'", nested=False)
    has_ids, has_lps = "teacher_topk_ids" in row, "teacher_topk_logprobs" in row
    if has_ids != has_lps:
        raise ValueError(f"row {index}: 'teacher_topk_ids' and 'teacher_topk_logprobs' must be given together")
    if has_ids:
        ids, lps = row["teacher_topk_ids"], row["teacher_topk_logprobs"]
        _check_logprobs(lps, f"row {index}, field 'teacher_topk_logprobs'", nested=True)
        if not isinstance(ids, list) or len(ids) != len(lps) or any(
            not isinstance(a, list) or len(a) != len(b) for a, b in zip(ids, lps)
        ):
            raise ValueError(
                f"row {index}: 'teacher_topk_ids' and 'teacher_topk_logprobs' must have the same [tokens][k] shape"
            )
    if "teacher_logprobs" in row and has_lps and len(row["teacher_logprobs"]) != len(row["teacher_topk_logprobs"]):
        raise ValueError(
            f"row {index}: 'teacher_logprobs' has {len(row['teacher_logprobs'])} tokens but 'teacher_topk_logprobs' "
            f"has {len(row['teacher_topk_logprobs'])}"
        )
    return out


def load_supervised_dataset(path_or_rows: str | os.PathLike | Iterable[Mapping[str, Any]]):
    """Load distillation rows into a ``datasets.Dataset`` in TRL's conversational prompt/completion format.

    Accepted input: a ``.json`` file (a list of rows, or ``{"data": [...]}``), a ``.jsonl`` file, or an
    iterable of dicts. Each row needs a ``prompt`` (string or chat messages) and an answer in
    ``completion``, ``chosen`` or ``response`` (string or messages) — or a single ``messages`` list ending
    with the assistant's answer. Optional teacher columns are validated and kept:
    ``teacher_logprobs`` (one log-prob per completion token), ``teacher_topk_ids`` /
    ``teacher_topk_logprobs`` (``[tokens][k]``). Other columns (``code``, ``tests``, ...) pass through.

    Returns:
        ``datasets.Dataset`` with ``prompt`` (list of messages), ``completion`` (list with one assistant
        message) and the other columns.

    Raises:
        ValueError: naming the row index and the field when a row is missing something or malformed.
    """
    from datasets import Dataset

    rows = [_normalise_row(row, i) for i, row in enumerate(_read_rows(path_or_rows))]
    if not rows:
        raise ValueError("the dataset is empty")
    keys = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != keys:
            missing, extra = sorted(keys - set(row)), sorted(set(row) - keys)
            raise ValueError(f"row {i}: columns differ from row 0 (missing {missing}, extra {extra})")
    return Dataset.from_list(rows)


def _first_bad_value(column) -> tuple[int, Any] | None:
    """``(row, value)`` of the first null, non-finite or positive log-prob in a (nested) list column."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    null_rows = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
    first = (int(null_rows[0]), None) if len(null_rows) else None
    rows = np.arange(len(arr))
    values = arr
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        parents = pc.list_parent_indices(values).to_numpy(zero_copy_only=False)
        rows = rows[parents]
        values = pc.list_flatten(values)
    if len(values) == 0:
        return first
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        return (int(rows[0]), f"a {values.type} value")
    x = values.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    bad = np.flatnonzero(~np.isfinite(x) | (x > 1e-6))
    if len(bad) and (first is None or rows[bad[0]] < first[0]):
        first = (int(rows[bad[0]]), float(x[bad[0]]))
    return first


def check_teacher_columns(dataset, name: str = "train") -> None:
    """Refuse a dataset whose teacher log-prob columns hold NaN, +-inf, null or positive values.

    Checks ``teacher_logprobs`` and ``teacher_topk_logprobs`` of a ``datasets.Dataset`` however it
    was built (file, ``Dataset.from_list``, ``map``...), in Arrow without a Python object per value.
    Raises ``ValueError`` naming the dataset, the first bad row and the column: one NaN log-prob
    makes every parameter NaN while the logged loss can still read 0. Other dataset types (e.g. an
    ``IterableDataset``) are left alone.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset) or len(dataset) == 0:
        return
    for column in ("teacher_logprobs", "teacher_topk_logprobs"):
        if column not in dataset.column_names:
            continue
        found = _first_bad_value(dataset.with_format("arrow", columns=[column])[:][column])
        if found is not None:
            row, value = found
            what = "null" if value is None else (value if isinstance(value, str) else repr(value))
            raise ValueError(f"{name} dataset, row {row}, column {column!r}: {what} is not a finite log-probability "
                             "<= 0 (fix or drop the row; check the teacher that produced it)")

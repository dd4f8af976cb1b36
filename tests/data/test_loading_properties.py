"""Property-based tests (hypothesis) of the loaders and input checks: any rows, bytes or configs give
a result or the documented error, never another exception."""

from __future__ import annotations

import json
import math

import datasets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdistill.data import load_supervised_dataset
from fastdistill.data.loading import check_teacher_columns
from fastdistill.evaluation.generation import read_jsonl
from fastdistill.teacher.cli import validate_config as validate_annotate_config
from fastdistill.validation import ConfigError

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=10))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=8)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                           "content": st.one_of(st.text(max_size=10), st.none())}), max_size=3)
rows = st.lists(st.one_of(
    st.dictionaries(st.sampled_from(["prompt", "completion", "messages", "response", "teacher_logprobs", "code"]),
                    st.one_of(json_values, messages, st.lists(st.floats(allow_nan=True), max_size=3)), max_size=4),
    json_values), max_size=4)


@SETTINGS
@given(rows)
def test_supervised_loader_gives_a_dataset_or_a_value_error(data):
    try:
        ds = load_supervised_dataset(data)
    except ValueError as err:
        assert str(err)
    else:
        assert isinstance(ds, datasets.Dataset) and len(ds) == len(data)
        assert {"prompt", "completion"} <= set(ds.column_names)


@SETTINGS
@given(st.binary(max_size=200))
def test_read_jsonl_any_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("j") / "g.jsonl"
    path.write_bytes(data)
    try:
        out = read_jsonl(path)
    except ValueError as err:
        assert str(path) in str(err)
    else:
        assert out and all(isinstance(r, dict) for r in out)


@SETTINGS
@given(st.lists(st.lists(st.one_of(st.floats(max_value=0.0), st.floats(allow_nan=True, allow_infinity=True)),
                         min_size=1, max_size=4), min_size=1, max_size=6))
def test_teacher_columns_refused_at_the_first_bad_row(values):
    ds = datasets.Dataset.from_dict({"teacher_logprobs": values})
    bad_rows = [i for i, row in enumerate(values) if any(not math.isfinite(x) or x > 1e-6 for x in row)]
    try:
        check_teacher_columns(ds)
    except ValueError as err:
        assert bad_rows and f"row {bad_rows[0]}," in str(err)
    else:
        assert not bad_rows


@SETTINGS
@given(st.one_of(json_values, st.fixed_dictionaries(
    {"input": json_values, "output": json_values, "teacher": st.one_of(json_values, st.fixed_dictionaries(
        {"server": st.dictionaries(st.sampled_from(["base_url", "model", "timeout", "max_retries", "x"]), scalars)}))},
    optional={"top_k": scalars, "temperature": scalars, "cache_dir": scalars})))
def test_any_annotate_config_is_valid_or_one_config_error(config):
    try:
        validate_annotate_config(json.loads(json.dumps(config, allow_nan=True)) if config is not None else config)
    except ConfigError as err:
        assert str(err)

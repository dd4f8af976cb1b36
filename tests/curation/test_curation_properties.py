"""Property-based tests (hypothesis) of the curation steps on empty, None, non-string, huge, non-UTF-8
and adversarial input: no crash other than the documented errors, schema kept, rows independent."""

from __future__ import annotations

import re
import sqlite3

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdistill import curation as C
from fastdistill.curation.canonical import canonical_row
from fastdistill.curation.cli import validate_config
from fastdistill.curation.filters import rule_reason
from fastdistill.curation.scoring import score_arrow
from fastdistill.curation.sql_eval import ERROR_CLASSES, sqlite_exec_eval_rows
from fastdistill.files import load_dataset_file
from fastdistill.validation import ConfigError, UserError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])
DATASET = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])

ADVERSARIAL = ["", " ", "\n\t ", "\ufeff", "\x00", "```", "```sql\n", "SELECT", "select 1; drop table t;", "'", '"',
               "--", "/*", "é", "e\u0301", "\u200b", "\U0001f600", "a" * 5000, "word " * 500, "\r\n", "\\", "%s", "{}"]
texts = st.one_of(st.none(), st.text(max_size=60), st.sampled_from(ADVERSARIAL))
nonempty_lists = st.lists(texts, min_size=0, max_size=12)


def _string_ds(values, name="text"):
    return datasets.Dataset.from_dict({name: values, "row": list(range(len(values)))},
                                      features=datasets.Features({name: datasets.Value("string"),
                                                                  "row": datasets.Value("int64")}))


@DATASET
@given(nonempty_lists)
def test_hash_and_canonicalize_keep_rows_schema_and_independence(values):
    ds = _string_ds(values)
    hashed = C.compute_hash(C.canonicalize(ds, "text"), ["text"])
    assert hashed.column_names == ["text", "row", "canonical", "hash"]
    assert hashed["row"] == list(range(len(values))) and hashed["text"] == values
    by_canonical = {}
    for v, canon, h in zip(values, hashed["canonical"], hashed["hash"]):
        assert canon == canonical_row([v])  # each row's value depends on that row only
        assert h is None or re.fullmatch(r"[0-9a-f]{64}", h)
        if canon is not None:  # equal canonical text <=> equal hash
            assert by_canonical.setdefault(canon, h) == h
    assert len(set(by_canonical.values())) == len(by_canonical)


@DATASET
@given(st.lists(st.one_of(st.none(), st.integers(-5, 5), st.floats(allow_nan=True)), max_size=10))
def test_hash_of_non_string_columns(values):
    ds = datasets.Dataset.from_dict({"x": values}, features=datasets.Features({"x": datasets.Value("float64")}))
    out = C.compute_hash(ds, ["x"])
    assert len(out) == len(values) and "hash" in out.column_names


@DATASET
@given(nonempty_lists)
def test_exact_dedup_keeps_first_occurrences_in_order(values):
    ds = C.compute_hash(_string_ds(values), ["text"])
    out = C.deduplicate(ds, "hash")
    seen, expected = set(), []
    for i, h in enumerate(ds["hash"]):
        if h not in seen:
            seen.add(h)
            expected.append(i)
    assert out["row"] == expected
    marked = C.deduplicate(ds, "hash", mode="mark")
    assert len(marked) == len(values) and [not d for d in marked["is_duplicate"]] == [i in expected for i in range(len(values))]


@FEW
@given(st.lists(st.one_of(st.none(), st.sampled_from(["a", "a b", "b", "x y", "", "one two three"]),
                          st.text(alphabet="ab ", max_size=12)), max_size=12), st.integers(1, 6))
def test_minhash_dedup_never_raises_on_short_texts(values, ngram):
    ds = _string_ds(values)
    out = C.deduplicate(ds, "text", method="minhash", ngram=ngram, mode="mark")
    assert len(out) == len(values) and out["text"] == values
    first = set()
    for v, dup in zip(values, out["is_duplicate"]):
        if v is not None and v.split():
            if v in first:
                assert dup  # an exact copy of a kept text is always a duplicate
            if not dup:
                first.add(v)


@DATASET
@given(nonempty_lists, st.sampled_from([None, "a", "^SELECT", "(?i)select", r"\d+"]),
       st.sampled_from([None, 0, 3]), st.sampled_from([None, 10, 100]), st.sampled_from([None, "python", "sql"]))
def test_rule_filter_reasons_are_per_row(values, regex, min_len, max_len, parses_as):
    ds = _string_ds(values)
    kwargs = dict(regex=regex, min_len=min_len, max_len=max_len, parses_as=parses_as)
    if min_len is not None and max_len is not None and min_len > max_len:
        return
    marked = C.rule_filter(ds, "text", mode="mark", **kwargs)
    assert marked["rule_reason"] == [rule_reason(v, **kwargs) for v in values]
    kept = C.rule_filter(ds, "text", **kwargs)
    assert kept.column_names == ds.column_names
    assert kept["row"] == [i for i, r in enumerate(marked["rule_reason"]) if r is None]


@FAST
@given(st.one_of(texts, st.integers(), st.lists(st.text(max_size=5), max_size=3), st.binary(max_size=20)))
def test_extract_sql_never_raises(value):
    out = C.extract_sql(value)
    assert out is None or (isinstance(out, str) and out == out.strip() and out and not out.endswith(";"))


@DATASET
@given(st.lists(st.tuples(st.one_of(st.none(), st.booleans()), st.one_of(st.none(), st.floats(0, 1))),
                max_size=12),
       st.one_of(st.none(), st.fixed_dictionaries({}, optional={"pass": st.floats(0, 1), "kill_rate": st.floats(0, 1)})))
def test_scores_are_in_range_and_per_row(rows, weights):
    table = datasets.Dataset.from_dict(
        {"tests_passed": [r[0] for r in rows], "kill_rate": [r[1] for r in rows]},
        features=datasets.Features({"tests_passed": datasets.Value("bool"), "kill_rate": datasets.Value("float64")}),
    ).with_format("arrow")[:]
    scores = score_arrow(table, weights).to_pylist()
    w = {"pass": 0.5, "kill_rate": 0.5, **(weights or {})}
    for (passed, kill), s in zip(rows, scores):
        expected = (w["pass"] + w["kill_rate"] * (kill or 0.0)) if passed else 0.0
        assert s == pytest.approx(expected)


@DATASET
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=True)), max_size=15),
       st.floats(-2, 2), st.one_of(st.none(), st.integers(1, 5)))
def test_keep_by_score_keeps_order_and_threshold(values, min_score, top_k):
    ds = datasets.Dataset.from_dict({"score": values, "row": list(range(len(values)))},
                                    features=datasets.Features({"score": datasets.Value("float64"),
                                                                "row": datasets.Value("int64")}))
    out = C.keep_by_score(ds, min_score=min_score, top_k=top_k)
    passing = [i for i, v in enumerate(values) if v is not None and v >= min_score]
    assert out["row"] == sorted(out["row"]) and set(out["row"]) <= set(passing)
    assert len(out) == (len(passing) if top_k is None else min(top_k, len(passing)))


@pytest.fixture(scope="module")
def small_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
        conn.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"item{i}", i * 1.5) for i in range(5)])
    return path


SQL = st.one_of(texts, st.sampled_from(["SELECT * FROM items", "SELECT name FROM items ORDER BY id",
                                        "DELETE FROM items", "SELECT * FROM nope", "SELECT nope FROM items",
                                        "PRAGMA writable_schema = 1", "ATTACH 'x.db' AS x",
                                        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r",
                                        "SELECT 1; SELECT 2"]))


@FEW
@given(st.lists(st.tuples(SQL, SQL, st.sampled_from(["db", "missing", None, "notadb"])), min_size=1, max_size=6))
def test_sql_rows_are_evaluated_alone_and_never_raise(small_db, tmp_path_factory, rows):
    before = small_db.read_bytes()
    notadb = small_db.parent / "notadb.db"
    notadb.write_text("plain text")
    paths = {"db": str(small_db), "missing": str(small_db.parent / "missing.db"), None: None, "notadb": str(notadb)}
    batch = {"db_path": [paths[r[2]] for r in rows], "pred_sql": [r[0] for r in rows], "gold_sql": [r[1] for r in rows]}
    together = sqlite_exec_eval_rows(batch, timeout_s=0.5, max_rows=1000)
    for i in range(len(rows)):
        alone = sqlite_exec_eval_rows({k: [v[i]] for k, v in batch.items()}, timeout_s=0.5, max_rows=1000)
        if "timeout" not in (together["exec_error"][i] or "") and "timeout" not in (alone["exec_error"][0] or ""):
            assert alone["exec_error"][0] == together["exec_error"][i]
            assert alone["exec_match"][0] == together["exec_match"][i]
        err = together["exec_error"][i]
        assert err is None or err.removeprefix("gold_error:") in ERROR_CLASSES
    assert small_db.read_bytes() == before  # nothing any query did changed the database


@FEW
@given(st.binary(max_size=300), st.sampled_from([".jsonl", ".json", ".parquet"]))
def test_loading_any_bytes_gives_a_dataset_or_a_user_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("in") / f"data{suffix}"
    path.write_bytes(data)
    try:
        out = load_dataset_file(path)
    except UserError as err:
        assert "input.path" in str(err)
    else:
        assert isinstance(out, datasets.Dataset)


CONFIG_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=8),
              st.sampled_from(["compute_hash", "deduplicate", "keep_by_score", "jsonl", "min_rows_out", "gate"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
        st.one_of(st.text(max_size=8), st.sampled_from(["path", "steps", "columns", "timeout_s", "weights",
                                                         "min_score", "min_rows_out", "regex"])), inner, max_size=3)),
    max_leaves=12)


@FAST
@given(st.one_of(CONFIG_VALUES, st.fixed_dictionaries({"input": CONFIG_VALUES, "steps": CONFIG_VALUES},
                                                      optional={"gate": CONFIG_VALUES, "output": CONFIG_VALUES})))
def test_any_curate_config_is_valid_or_one_config_error(config):
    try:
        validate_config(config)
    except ConfigError as err:
        assert str(err)

"""Bad input to curation: configs refused up front with every problem, bad rows isolated, schema kept."""

import json
import sqlite3

import datasets
import pytest

from fastdistill import curation as C
from fastdistill.curation.cli import main, validate_config
from fastdistill.validation import ConfigError

STRING_COLUMNS = ["question", "gold_sql", "pred_sql", "db_path", "code", "tests", "completion", "text"]


def _empty():
    return datasets.Dataset.from_dict(
        {k: [] for k in STRING_COLUMNS},
        features=datasets.Features({k: datasets.Value("string") for k in STRING_COLUMNS}),
    )


@pytest.mark.parametrize(
    "step, added",
    [
        (lambda d: C.canonicalize(d, "question"), {"canonical"}),
        (lambda d: C.compute_hash(d, ["question"]), {"hash"}),
        (lambda d: C.rule_filter(d, "question", mode="mark"), {"rule_reason"}),
        (lambda d: C.clean_sql_output(d, "completion", out_column="sql_out"), {"sql_out"}),
        (lambda d: C.sqlite_exec_eval(d), {"exec_match", "exec_error", "exec_time_s"}),
        (lambda d: C.tests_exec_eval(d), {"tests_passed", "tests_error", "kill_rate"}),
        (lambda d: C.score_from_exec_eval(C.sqlite_exec_eval(d)), {"score", "exec_match"}),
        (lambda d: C.deduplicate(d, "text", mode="mark"), {"is_duplicate"}),
    ],
)
def test_steps_keep_their_output_schema_on_empty_input(step, added):
    out = step(_empty())
    assert len(out) == 0
    assert set(STRING_COLUMNS) | added <= set(out.column_names)


def test_empty_everything_filtered_then_score_and_keep():
    # "everything was filtered out" must not surface later as "column 'score' not in the dataset"
    ds = datasets.Dataset.from_dict({"pred_sql": ["x"], "gold_sql": ["y"], "db_path": [None]})
    ds = C.rule_filter(ds, "pred_sql", min_len=5)
    assert len(ds) == 0
    out = C.keep_by_score(C.score_from_exec_eval(C.sqlite_exec_eval(ds)), min_score=1.0)
    assert len(out) == 0 and "score" in out.column_names


@pytest.mark.parametrize("texts", [["a", "a"], ["a"], ["a b", "a b"], ["x", "y z", "x", ""], ["one"] * 7])
def test_minhash_on_one_or_two_word_texts(texts):
    out = C.deduplicate(datasets.Dataset.from_dict({"text": texts}), "text", method="minhash", mode="mark")
    assert len(out) == len(texts)
    first = {}
    for t, dup in zip(texts, out["is_duplicate"]):
        if t:  # identical non-empty texts: only the first copy is kept
            assert dup == (t in first)
            first.setdefault(t, True)


def test_file_that_is_not_a_database_says_so(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("this is a text file, not SQLite\n" * 20)
    good = tmp_path / "good.db"
    with sqlite3.connect(good) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
    ds = datasets.Dataset.from_dict(
        {
            "db_path": [str(bad), str(good), str(tmp_path / "missing.db")],
            "pred_sql": ["SELECT 1"] * 3,
            "gold_sql": ["SELECT x FROM t"] * 3,
        }
    )
    out = C.sqlite_exec_eval(ds)
    assert out["exec_error"] == ["not_a_database", None, "db_not_found"]
    assert out["exec_match"] == [False, True, False]  # the bad rows change nothing for the good one
    assert "not_a_database" in C.ERROR_CLASSES


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(timeout_s=-1), "timeout_s"),
        (dict(timeout_s=float("nan")), "timeout_s"),
        (dict(max_rows=0), "max_rows"),
    ],
)
def test_sqlite_exec_eval_refuses_bad_parameters(kwargs, match):
    ds = datasets.Dataset.from_dict({"db_path": ["x.db"], "pred_sql": ["SELECT 1"], "gold_sql": ["SELECT 1"]})
    with pytest.raises(ValueError, match=match):
        C.sqlite_exec_eval(ds, **kwargs)


def test_score_weights_and_rule_regex_refused():
    ds = datasets.Dataset.from_dict({"tests_passed": [True], "kill_rate": [1.0]})
    with pytest.raises(ValueError, match="did you mean 'kill_rate'"):
        C.score_from_exec_eval(ds, weights={"kill": 0.5})
    with pytest.raises(ValueError, match="finite"):
        C.score_from_exec_eval(ds, weights={"pass": float("inf")})
    with pytest.raises(ValueError, match=">= 0"):
        C.score_from_exec_eval(ds, weights={"pass": -1})
    assert C.score_from_exec_eval(ds, weights={"pass": 0.25, "kill_rate": 0.75})["score"] == [1.0]
    with pytest.raises(ValueError, match="regex.*invalid regular expression"):
        C.rule_filter(datasets.Dataset.from_dict({"q": ["a"]}), "q", regex="([")


def test_gate_typos_and_bad_values_refused():
    report = {"metrics": {"rows_out": 3}}
    with pytest.raises(ValueError, match="did you mean 'min_rows_out'"):
        C.quality_gate(report, {"min_row_out": 1})
    with pytest.raises(ValueError, match="finite number"):
        C.quality_gate(report, {"min_rows_out": "three"})


def test_validate_config_lists_every_problem_with_closest_names():
    config = {
        "input": {"path": "x.jsonl", "fromat": "jsonl"},
        "gates": {"min_rows_out": 1},
        "num_proc": 0,
        "steps": [
            {"compute_hash": {"column": ["q"]}},
            {"dedupe": {}},
            {"score_from_exec_eval": {"weights": {"pass": 0.5, "kil_rate": 0.5}}},
            {"sqlite_exec_eval": {"timeout_s": -2}},
            {"keep_by_score": {"min_score": float("nan")}},
            {"rule_filter": {"column": "q", "regex": "(", "mode": "dorp"}},
        ],
        "gate": {"min_exec_match_rate": "high"},
    }
    with pytest.raises(ConfigError) as err:
        validate_config(config, "curate.yaml")
    msg = str(err.value)
    for expected in [
        "input.fromat",
        "did you mean 'format'",
        "gates: unknown key (did you mean 'gate'?)",
        "num_proc: must be >= 1",
        "steps[0].column",
        "steps[0].columns: required",
        "did you mean 'columns'",
        "steps[1]: unknown step 'dedupe'",
        "did you mean 'deduplicate'",
        "steps[2].weights.kil_rate",
        "steps[3].timeout_s: must be > 0",
        "steps[4].min_score",
        "steps[5].regex",
        "steps[5].mode",
        "gate.min_exec_match_rate: expected a finite number",
    ]:
        assert expected in msg, (expected, msg)
    assert msg.startswith("curate.yaml: 12 problems")


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_cli_bad_config_fails_before_any_work_and_keeps_old_output(tmp_path, capsys):
    _write(tmp_path, "in.jsonl", "".join(json.dumps({"q": f"row {i}"}) + "\n" for i in range(4)))
    good = _write(
        tmp_path,
        "good.yaml",
        "input: {path: in.jsonl}\noutput: {dir: out}\n"
        "steps:\n  - compute_hash: {columns: [q]}\ngate: {min_rows_out: 1}\n",
    )
    assert main(["--config", good]) == 0
    before = (tmp_path / "out" / "curated.jsonl").read_bytes()
    # typo'd gate key: refused (not "quality gate PASSED" with nothing checked), nothing written
    bad = _write(
        tmp_path,
        "bad.yaml",
        "input: {path: in.jsonl}\noutput: {dir: out}\n"
        "steps:\n  - compute_hash: {columns: [q]}\ngates: {min_rows_out: 100}\n",
    )
    capsys.readouterr()
    assert main(["--config", bad]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "gates" in err and "did you mean 'gate'" in err and "Traceback" not in err
    assert (tmp_path / "out" / "curated.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "is empty"),
        ("\n\n", "only blank lines"),
        ('{"q": 1}\n{"q": \n', "line 2 is not valid JSON"),
        (b'{"q": "\xff"}\n', "line 1 is not valid UTF-8"),
        ("[1, 2]\n", "line 1 is a JSON list"),
    ],
)
def test_cli_bad_input_files_name_file_and_line(tmp_path, capsys, content, expected):
    path = tmp_path / "in.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg = _write(tmp_path, "c.yaml", "input: {path: in.jsonl}\nsteps:\n  - compute_hash: {columns: [q]}\n")
    assert main(["--config", cfg]) == 2
    err = capsys.readouterr().err
    assert expected in err and "in.jsonl" in err and "Traceback" not in err


def test_cli_invalid_regex_is_a_user_error(tmp_path, capsys):
    _write(tmp_path, "in.jsonl", '{"q": "a"}\n')
    cfg = _write(tmp_path, "c.yaml", "input: {path: in.jsonl}\nsteps:\n  - rule_filter: {column: q, regex: '(['}\n")
    assert main(["--config", cfg]) == 2
    assert "steps[0].regex: invalid regular expression" in capsys.readouterr().err


def test_cli_step_report_counts_row_errors(tmp_path):
    _write(
        tmp_path,
        "in.jsonl",
        "".join(
            json.dumps({"db_path": "nope.db", "pred_sql": "SELECT 1", "gold_sql": "SELECT 1"}) + "\n" for _ in range(3)
        ),
    )
    cfg = _write(tmp_path, "c.yaml", "input: {path: in.jsonl}\noutput: {dir: out}\nsteps:\n  - sqlite_exec_eval: {}\n")
    assert main(["--config", cfg]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["steps"][0]["row_errors"] == {"db_not_found": 3}


def test_column_typos_are_found_before_any_step_runs():
    from fastdistill.curation.cli import check_columns

    steps = [
        ("compute_hash", {"columns": ["question"]}),
        ("deduplicate", {"column": "hash"}),
        ("clean_sql_output", {"column": "completion"}),
        ("sqlite_exec_eval", {"gold_column": "gold"}),
        ("score_from_exec_eval", {}),
        ("keep_by_score", {"column": "scor"}),
    ]
    check_columns(steps[:3], ["question", "completion"])
    with pytest.raises(ConfigError) as err:
        check_columns(steps, ["question", "completion", "gold_sql", "db_path"])
    msg = str(err.value)
    assert (
        "steps[3] (sqlite_exec_eval): column 'gold' is not in the data at this step (did you mean 'gold_sql'?)" in msg
    )
    assert "steps[5] (keep_by_score): column 'scor'" in msg and "did you mean 'score'" in msg
    with pytest.raises(ConfigError, match="needs one of the columns"):
        check_columns([("score_from_exec_eval", {})], ["question"])

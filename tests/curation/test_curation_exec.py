"""Execution steps on real files: SQLite exec eval (safety, time limit, matching), tests exec eval, curate CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from pathlib import Path

import datasets
import pytest

from fastdistill import curation as C
from fastdistill.curation.examples import make_sql_example

datasets.disable_progress_bars()
EXAMPLES = Path(make_sql_example.__file__).parent


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "shop.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, kind TEXT);
        INSERT INTO items VALUES (1,'pen',1.5,'office'),(2,'cup',4.0,'kitchen'),(3,'ink',1.5,'office'),
                                 (4,'pot',20.0,'kitchen'),(5,'pad',3.0,'office');
    """)
    conn.commit()
    conn.close()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _eval(db, pairs, **kw):
    ds = datasets.Dataset.from_dict({"db_path": [str(db)] * len(pairs), "pred_sql": [p for p, _ in pairs],
                                     "gold_sql": [g for _, g in pairs], "row": list(range(len(pairs)))})
    return C.sqlite_exec_eval(ds, **kw)


def test_equivalent_queries_match_and_wrong_ones_do_not(db):
    out = _eval(db, [
        ("select i.name from items i where i.kind='office'", "SELECT name FROM items WHERE kind = 'office'"),
        ("SELECT name FROM items WHERE price < 3.5 AND kind <> 'kitchen'",
         "SELECT name FROM items WHERE kind = 'office'"),
        ("SELECT COUNT(*) FROM items", "SELECT COUNT(id) FROM items"),
        ("SELECT kind, SUM(price) FROM items GROUP BY kind", "SELECT kind, TOTAL(price) AS t FROM items GROUP BY 1"),
        ("SELECT name FROM items", "SELECT name FROM items WHERE kind = 'office'"),
        ("SELECT price FROM items WHERE kind='office'", "SELECT DISTINCT price FROM items WHERE kind='office'"),
    ])
    assert out["exec_match"] == [True, True, True, True, False, False]
    assert out["exec_error"] == [None] * 6
    assert all(isinstance(t, float) and t >= 0 for t in out["exec_time_s"])
    assert out["row"] == list(range(6))


def test_order_matters_only_when_gold_orders(db):
    out = _eval(db, [
        ("SELECT name FROM items ORDER BY name DESC", "SELECT name FROM items ORDER BY name"),
        ("SELECT name FROM items ORDER BY name", "SELECT name FROM items ORDER BY name"),
        ("SELECT name FROM items ORDER BY name DESC", "SELECT name FROM items"),
        ("SELECT name FROM items ORDER BY id DESC", "SELECT name FROM (SELECT name FROM items ORDER BY name)"),
    ])
    assert out["exec_match"] == [False, True, True, True]
    from fastdistill.curation.sql_eval import gold_is_ordered

    assert gold_is_ordered("select a from t order by a")
    assert not gold_is_ordered("select a from (select a from t order by a) limit 3")


def test_runaway_query_is_interrupted_within_limit(db):
    loop = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
    t0 = time.perf_counter()
    out = _eval(db, [(loop, "SELECT 1"), ("SELECT 1", "SELECT 1")], timeout_s=0.5)
    elapsed = time.perf_counter() - t0
    assert out["exec_error"] == ["timeout", None]
    assert out["exec_match"] == [False, True]
    assert out["exec_time_s"][0] < 5.0 and elapsed < 30  # stopped, not run forever


def test_writes_and_attach_cannot_change_any_file(db, tmp_path):
    before = _digest(db)
    files_before = sorted(p.name for p in tmp_path.iterdir())
    evil = tmp_path / "evil.db"
    attacks = [
        "DELETE FROM items",
        "UPDATE items SET price = 0",
        "INSERT INTO items VALUES (9,'x',1,'y')",
        "DROP TABLE items",
        "CREATE TABLE t2 (a)",
        f"ATTACH DATABASE '{evil}' AS evil",
        "PRAGMA user_version = 7",
        "PRAGMA journal_mode = WAL",
        "VACUUM",
        "DELETE FROM items; SELECT 1",
        "REPLACE INTO items VALUES (1,'a',1,'b')",
    ]
    out = _eval(db, [(a, "SELECT COUNT(*) FROM items") for a in attacks])
    assert out["exec_match"] == [False] * len(attacks)
    assert all(e in {"not_authorized", "multiple_statements"} for e in out["exec_error"]), out["exec_error"]
    assert _digest(db) == before
    assert not evil.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # no journal/wal/new db file
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*), SUM(price) FROM items").fetchone() == (5, 30.0)
    assert conn.execute("PRAGMA user_version").fetchone() == (0,)
    conn.close()


def test_malformed_and_missing_inputs_give_error_classes_never_raise(db, tmp_path):
    ds = datasets.Dataset.from_dict({
        "db_path": [str(db), str(db), str(db), str(db), str(tmp_path / "missing.db"), str(db), None, str(db)],
        "pred_sql": ["SELEC name FROM items", "SELECT nope FROM items", "SELECT * FROM nowhere", "SELECT 1",
                     "SELECT 1", None, "SELECT 1", "SELECT abs(-9223372036854775808)"],
        "gold_sql": ["SELECT 1", "SELECT 1", "SELECT 1", "SELECT FROM", "SELECT 1", "SELECT 1", "SELECT 1",
                     "SELECT 1"],
    })
    out = C.sqlite_exec_eval(ds)
    assert out["exec_error"] == ["syntax_error", "no_such_column", "no_such_table", "gold_error:syntax_error",
                                 "db_not_found", "missing_input", "missing_input", "runtime_error"]
    assert out["exec_match"] == [False] * 8
    assert not (tmp_path / "missing.db").exists()  # read-only open never creates a database


def test_relative_db_paths_with_db_root(db):
    ds = datasets.Dataset.from_dict({"db_path": ["shop.db"], "pred_sql": ["SELECT 1"], "gold_sql": ["SELECT 1.0"]})
    assert C.sqlite_exec_eval(ds, db_root=str(db.parent))["exec_match"] == [True]
    with pytest.raises(KeyError, match="gold_sql"):
        C.sqlite_exec_eval(ds.remove_columns("gold_sql"))


@pytest.mark.slow
def test_sqlite_exec_eval_num_proc_2_keeps_rows(db):
    pairs = [("SELECT name FROM items", "SELECT name FROM items"), ("SELEC", "SELECT 1")] * 10
    one = _eval(db, pairs)
    two = _eval(db, pairs, num_proc=2)
    assert one["row"] == two["row"] == list(range(20))
    assert one["exec_match"] == two["exec_match"] and one["exec_error"] == two["exec_error"]


def _run_cli(config: Path) -> int:
    from fastdistill.curation.cli import main

    return main(["--config", str(config)], command="curate")


def test_curate_cli_sql_example(tmp_path):
    make_sql_example.make(tmp_path / "sql_data")
    shutil.copy(EXAMPLES / "curate_sql.yaml", tmp_path / "curate.yaml")
    dbs = {p: _digest(p) for p in (tmp_path / "sql_data").glob("*.db")}
    assert _run_cli(tmp_path / "curate.yaml") == 0
    out = tmp_path / "sql_curated"
    rows = [json.loads(line) for line in (out / "curated.jsonl").read_text().splitlines()]
    assert rows and all(r["exec_match"] and r["score"] == 1.0 for r in rows)
    questions = [r["question"] for r in rows]
    assert questions == [q for q in dict.fromkeys(r["question"] for r in make_sql_example.ROWS) if q in questions]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kept_row_hashes"] == [r["hash"] for r in rows]
    assert [s["name"] for s in manifest["steps"]][:2] == ["compute_hash", "deduplicate"]
    assert manifest["steps"][1]["rows_in"] - manifest["steps"][1]["rows_out"] == 1
    report = json.loads((out / "quality_report.json").read_text())
    assert report["metrics"]["duplicate_ratio"] == pytest.approx(1 / 11)
    assert {"not_authorized", "syntax_error"} <= set(report["details"]["exec_error_classes"])
    assert (out / "quality_report.md").exists()
    assert len(json.loads((out / "timing_report.json").read_text())["steps"]) == 7
    assert {p: _digest(p) for p in dbs} == dbs  # the DELETE in the data changed nothing

    # the same run with an impossible gate exits non-zero and names the threshold
    cfg = (tmp_path / "curate.yaml").read_text().replace("min_exec_match_rate: 0.3", "min_exec_match_rate: 0.99")
    (tmp_path / "strict.yaml").write_text(cfg)
    assert _run_cli(tmp_path / "strict.yaml") == 1
    gate = json.loads((out / "gate.json").read_text())
    assert not gate["passed"] and gate["failures"][0].startswith("min_exec_match_rate")


def test_curate_cli_parquet_and_bad_configs(tmp_path, capsys):
    ds = datasets.Dataset.from_dict({"text": ["a", "a ", "b"]})
    ds.to_parquet(str(tmp_path / "in.parquet"))
    (tmp_path / "ok.yaml").write_text(
        "input: {path: in.parquet}\noutput: {dir: out, format: parquet}\n"
        "steps:\n  - compute_hash: {columns: [text]}\n  - deduplicate: {column: hash}\n"
        "gate: {max_duplicate_ratio: 0.5}\n")
    assert _run_cli(tmp_path / "ok.yaml") == 0
    assert datasets.Dataset.from_parquet(str(tmp_path / "out" / "curated.parquet"))["text"] == ["a", "b"]
    (tmp_path / "bad.yaml").write_text("input: {path: in.parquet}\nsteps:\n  - frobnicate: {}\n")
    assert _run_cli(tmp_path / "bad.yaml") == 2
    assert "frobnicate" in capsys.readouterr().err
    (tmp_path / "bad2.yaml").write_text("input: {path: in.parquet}\nsteps:\n  - deduplicate: {colum: hash}\n")
    assert _run_cli(tmp_path / "bad2.yaml") == 2
    assert "colum" in capsys.readouterr().err


def _rewards_available() -> bool:
    try:
        from fastdistill.rewards import mutation_score, run_tests  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _rewards_available(), reason="fastdistill.rewards (run_tests, mutation_score) not available")
def test_tests_exec_eval_and_testgen_example(tmp_path):
    rows = [json.loads(line) for line in (EXAMPLES / "testgen_example.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows[2:6] + [{"prompt": "p", "code": None, "tests": "x"}])
    out = C.tests_exec_eval(ds, timeout_s=30.0, max_mutants=8)
    assert out["prompt"] == ds["prompt"]
    # clamp: strong tests pass, kill mutants
    assert out["tests_passed"][0] and out["tests_n_passed"][0] == 4 and out["kill_rate"][0] > 0.5
    # is_even: failing test
    assert not out["tests_passed"][1] and out["tests_n_failed"][1] >= 1 and out["tests_error"][1] == "tests_failed"
    assert out["kill_rate"][1] is None
    # greet: syntax error in the tests file
    assert not out["tests_passed"][2] and out["tests_error"][2] is not None
    # maximum: passing but weak tests (no assert) -> lower kill rate than clamp
    assert out["tests_passed"][3] and out["kill_rate"][3] < out["kill_rate"][0]
    assert out["tests_error"][4] == "missing_input"
    assert all(t >= 0 for t in out["tests_time_s"])
    scored = C.score_from_exec_eval(out)
    assert scored["score"][0] > scored["score"][3] > scored["score"][1] == 0.0

    shutil.copy(EXAMPLES / "testgen_example.jsonl", tmp_path)
    shutil.copy(EXAMPLES / "curate_testgen.yaml", tmp_path)
    assert _run_cli(tmp_path / "curate_testgen.yaml") in (0, 1)
    report = json.loads((tmp_path / "testgen_curated" / "quality_report.json").read_text())
    assert report["metrics"]["rows_in"] == 6 and report["metrics"]["duplicate_ratio"] == pytest.approx(1 / 6)
    kept = [json.loads(x) for x in (tmp_path / "testgen_curated" / "curated.jsonl").read_text().splitlines()]
    assert [r["code"].split("(")[0] for r in kept] == ["def add", "def clamp"]  # order kept, duplicate gone
    assert all(r["tests_passed"] for r in kept)

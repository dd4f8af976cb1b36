"""The Ray Data engine gives the same rows, content and order as the datasets path (local Ray, 2 CPUs)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pytest
import yaml

from fastdistill import curation as C

ray = pytest.importorskip("ray", reason="Ray Data is an optional extra: pip install 'fastdistill[ray]'")
R = pytest.importorskip("fastdistill.curation.ray")

datasets.disable_progress_bars()
pytestmark = pytest.mark.slow  # starts a local Ray instance (~10-30 s)


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        except Exception:  # Ray waits 30 s for its raylet; on a loaded machine try once more
            ray.shutdown()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _rows(n: int, seed: int = 0) -> dict:
    """n code-like rows: ~60% distinct, exact copies that differ only in whitespace, near copies
    with one edited token, some empty/null/short rows, and execution results to score."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"v{i}" for i in range(3000)] + ["def", "return", "=", "(", ")", ":", "assert", "café"])
    n_orig = int(n * 0.6)
    lengths = rng.integers(12, 60, n_orig)
    words = rng.choice(vocab, int(lengths.sum()))
    cuts = np.concatenate([[0], np.cumsum(lengths)])
    originals = [f"def f{i}(x):\n    " + " ".join(words[cuts[i]:cuts[i + 1]]) for i in range(n_orig)]
    texts = list(originals)
    src = rng.integers(0, n_orig, n - n_orig)
    for k, j in enumerate(src.tolist()):
        t = originals[j]
        if k % 3 == 0:  # near copy: one token edited
            parts = t.split(" ")
            parts[len(parts) // 2] = "edited"
            texts.append(" ".join(parts))
        else:  # exact copy after canonicalization
            texts.append("  " + t.replace("\n    ", "\n\t ") + "\n")
    order = rng.permutation(n)
    texts = [texts[i] for i in order]
    for i in range(0, n, 997):
        texts[i] = [None, "", "x"][i % 3]
    return {"text": texts, "exec_match": (rng.random(n) < 0.8).tolist()}


def _datasets_path(ds: datasets.Dataset) -> tuple[pa.Table, dict]:
    """The reference pipeline; cluster ids are mapped to the index column as the Ray path reports them."""
    ds = ds.add_column(R.INDEX_COLUMN, np.arange(len(ds)))
    ds = C.canonicalize(ds, "text")
    ds = C.compute_hash(ds, "text")
    ds = C.deduplicate(ds, "hash", cluster_column="cid")
    ds = C.rule_filter(ds, "text", min_len=5)
    before = np.asarray(ds[R.INDEX_COLUMN])
    ds = C.deduplicate(ds, "text", method="minhash", threshold=0.8, mode="mark", cluster_column="mcid")
    ds = C.score_from_exec_eval(ds)
    ds = C.keep_by_score(ds, min_score=0.5)
    table = ds.with_format("arrow")[:]
    table = table.set_column(table.column_names.index("mcid"), "mcid", pa.array(before[table["mcid"].to_numpy()]))
    return table, {"minhash_dups": int(np.sum(table["is_duplicate"].to_numpy(zero_copy_only=False)))}


def _ray_path(ds: datasets.Dataset) -> pa.Table:
    rds = R.from_dataset(ds, override_num_blocks=8)
    rds = R.canonicalize(rds, "text")
    rds = R.compute_hash(rds, "text")
    rds = R.deduplicate(rds, "hash", cluster_column="cid")
    rds = R.rule_filter(rds, "text", min_len=5)
    rds = R.deduplicate(rds, "text", method="minhash", threshold=0.8, mode="mark", cluster_column="mcid")
    rds = R.score_from_exec_eval(rds)
    rds = R.keep_by_score(rds, min_score=0.5)
    return R.to_table(rds, keep_index=True)


def test_ray_path_equals_datasets_path_on_100k_rows(local_ray):
    ds = datasets.Dataset.from_dict(_rows(100_000))
    ref, stats = _datasets_path(ds)
    got = _ray_path(ds)
    assert got.column_names == ref.column_names
    assert got.num_rows == ref.num_rows
    # the pipeline really removed exact copies, short rows and low scores, and flagged near copies
    assert 40_000 < ref.num_rows < 70_000 and stats["minhash_dups"] > 5_000
    for name in ref.column_names:  # row for row, in the order of the kept rows' original index
        assert got[name].to_pylist() == ref[name].to_pylist(), name
    assert np.all(np.diff(got[R.INDEX_COLUMN].to_numpy()) > 0)


def test_ray_exact_dedup_mark_and_top_k(local_ray):
    ds = datasets.Dataset.from_dict({"h": ["a", "b", "a", None, "c", None, "b"], "score": [0.1, 0.9, 0.5, 0.7,
                                                                                          0.9, 0.2, 0.3]})
    rds = R.from_dataset(ds, override_num_blocks=3)
    marked = R.to_table(R.deduplicate(rds, "h", mode="mark", cluster_column="c"))
    assert marked["is_duplicate"].to_pylist() == [False, False, True, False, False, True, True]
    assert marked["c"].to_pylist() == [0, 1, 0, 3, 4, 3, 1]
    top = R.to_table(R.keep_by_score(rds, min_score=0.2, top_k=3))
    assert top["score"].to_pylist() == C.keep_by_score(ds, min_score=0.2, top_k=3)["score"]


def test_curate_cli_engine_ray_writes_the_same_output(local_ray, tmp_path):
    from fastdistill.curation.cli import run_pipeline

    rows = _rows(3_000, seed=1)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "exec_match": m}) + "\n"
                                               for t, m in zip(rows["text"], rows["exec_match"])))
    config = {"input": {"path": "in.jsonl"}, "steps": [
        {"compute_hash": {"columns": ["text"]}}, {"deduplicate": {"column": "hash"}},
        {"rule_filter": {"column": "text", "min_len": 5}},
        {"deduplicate": {"column": "text", "method": "minhash"}},
        {"score_from_exec_eval": {}}, {"keep_by_score": {"min_score": 1.0}}], "gate": {"min_rows_out": 10}}
    outs = {}
    for engine in ("datasets", "ray"):
        cfg = {**config, "output": {"dir": f"out_{engine}"}}
        code, summary = run_pipeline(cfg, tmp_path, engine=engine)
        assert code == 0, summary
        outs[engine] = ((tmp_path / f"out_{engine}" / "curated.jsonl").read_text(),
                        json.loads((tmp_path / f"out_{engine}" / "manifest.json").read_text()),
                        json.loads((tmp_path / f"out_{engine}" / "quality_report.json").read_text()))
    assert outs["ray"][0] == outs["datasets"][0]
    assert outs["ray"][1]["kept_row_hashes"] == outs["datasets"][1]["kept_row_hashes"]
    assert [s["rows_out"] for s in outs["ray"][1]["steps"]] == [s["rows_out"] for s in outs["datasets"][1]["steps"]]
    assert outs["ray"][2]["metrics"] == outs["datasets"][2]["metrics"]
    assert yaml.safe_dump(config)  # the config itself is plain YAML

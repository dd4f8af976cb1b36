"""Tests for fastdistill.curation: canonical hashing (Arrow vs reference), dedup, filters, reports, gate."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import unicodedata

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fastdistill import curation as C
from fastdistill.curation import canonical as canon
from fastdistill.curation.dedup import choose_num_bands, first_occurrence_arrow, first_occurrence_python

datasets.disable_progress_bars()

TRICKY = [
    "  Cafe\u0301  au\tlait \n", "Cafe\u0301 au lait", "", None, "   ", "\u00a0x\u3000y\u2029", "x y",
    'quote "q" and \\ back\x01slash', "ΣΊΣΥΦΟΣ İstanbul", "ﬁ ligature", "x\x1fy", "emoji 😀  ok", "", None,
    "tab\t\tsep", "TAB SEP", "日本語　テキスト", "Cafe\u0301 au lait",
]


def _ds():
    n = len(TRICKY)
    return datasets.Dataset.from_dict({
        "text": TRICKY,
        "other": [None if i % 5 == 0 else f" v{i % 3}  " for i in range(n)],
        "num": [None if i % 7 == 0 else i % 4 for i in range(n)],
        "score": [None if i % 6 == 0 else i / 3 for i in range(n)],
        "meta": [{"b": i % 2, "a": " k  y "} if i % 4 else None for i in range(n)],
    })


def test_whitespace_set_is_python_isspace():
    expected = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    assert canon.WHITESPACE_CHARS == expected


@pytest.mark.parametrize("columns", [["text"], ["text", "other"], ["text", "num", "score", "meta"], ["meta"], ["num"]])
@pytest.mark.parametrize("opts", [{}, {"lowercase": True}, {"whitespace": "strip"}, {"whitespace": "keep"}])
def test_arrow_path_equals_reference_bit_for_bit(columns, opts):
    """#10: the Arrow path gives the same canonical strings, hashes, kept rows and mark column as the
    straightforward per-row reference (Python canonicalize + sha256 + first-seen set)."""
    ds = _ds()
    ref_canon = ds.map(lambda b: C.canonicalize_rows(b, columns, **opts), batched=True, batch_size=4)["canonical"]
    ref_hash = ds.map(lambda b: C.hash_rows(b, columns, **opts), batched=True, batch_size=4)["hash"]
    ref_hash = list(ref_hash)
    # the reference hash really is sha256 of the reference canonical string
    assert ref_hash == [None if c is None else hashlib.sha256(c.encode()).hexdigest() for c in ref_canon]
    fast = C.compute_hash(C.canonicalize(ds, columns, batch_size=5, **opts), columns, batch_size=7, **opts)
    assert list(fast["canonical"]) == list(ref_canon)
    assert list(fast["hash"]) == ref_hash
    ref_keep, ref_cluster = first_occurrence_python(ref_hash)
    marked = C.deduplicate(fast, "hash", mode="mark", cluster_column="cluster_id")
    assert list(marked["is_duplicate"]) == (~ref_keep).tolist()
    assert list(marked["cluster_id"]) == ref_cluster.tolist()
    dropped = C.deduplicate(fast, "hash")
    assert list(dropped["hash"]) == [h for h, k in zip(ref_hash, ref_keep) if k]
    if columns == ["text"] and not opts:
        # sanity of the definition itself: NFC + collapsed whitespace
        assert fast["canonical"][0] == unicodedata.normalize("NFC", "Café au lait")
        assert fast["canonical"][1] == fast["canonical"][0] and fast["hash"][1] == fast["hash"][0]
        assert fast["canonical"][5] == "x y" == fast["canonical"][6]
        assert fast["canonical"][3] is None and fast["hash"][3] is None
        assert fast["hash"][2] == hashlib.sha256(b"").hexdigest()


def test_hash_is_stable_known_value():
    ds = datasets.Dataset.from_dict({"q": ["  SELECT  1 \n"]})
    assert C.compute_hash(ds, "q")["hash"][0] == hashlib.sha256(b"SELECT 1").hexdigest()
    assert C.compute_hash(ds, "q", canonical=False)["hash"][0] == hashlib.sha256(b"  SELECT  1 \n").hexdigest()


def test_sql_normalisation_makes_equivalent_spellings_equal():
    ds = datasets.Dataset.from_dict({"q": ["select a  from t where b=1", "SELECT a FROM t WHERE b = 1", "SELECT b FROM t"]})
    h = C.compute_hash(ds, "q", sql=True)["hash"]
    assert h[0] == h[1] != h[2]


def test_steps_keep_order_and_other_columns():
    ds = datasets.Dataset.from_dict({"text": ["b", "a", "b", "c"], "id": [10, 11, 12, 13]}).with_format("numpy")
    out = C.compute_hash(ds, "text")
    assert out.format["type"] == "numpy"
    assert out.with_format(None)["id"] == [10, 11, 12, 13]
    assert C.deduplicate(out, "hash").with_format(None)["id"] == [10, 11, 13]


def test_exact_dedup_after_select_and_on_chunked_arrays():
    ds = datasets.Dataset.from_dict({"h": ["x", "y", "x", "z", "y", "w"]}).select([5, 4, 3, 2, 1, 0])
    assert C.deduplicate(ds, "h")["h"] == ["w", "y", "z", "x"]
    chunked = pa.chunked_array([pa.array(["a", None, "b"]), pa.array(["b", None, "c", "a"])])
    keep, cluster = first_occurrence_arrow(chunked)
    ref_keep, ref_cluster = first_occurrence_python(chunked.to_pylist())
    assert keep.tolist() == ref_keep.tolist() and cluster.tolist() == ref_cluster.tolist()
    big = np.random.default_rng(0).integers(0, 500, 20_000)
    keep, cluster = first_occurrence_arrow(pa.array(big))
    ref_keep, ref_cluster = first_occurrence_python(big.tolist())
    assert np.array_equal(keep, ref_keep) and np.array_equal(cluster, ref_cluster)


def _hex_column(rng, n, n_unique, null_every=0):
    pool = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n_unique)]
    return [None if null_every and i % null_every == 0 else pool[j] for i, j in enumerate(rng.integers(0, n_unique, n))]


def _arrow_variants(values):
    """The same values in the layouts the fixed-width fast path reads: chunked, sliced, binary,
    large_string, fixed_size_binary, nulls written with and without bytes (if_else keeps them)."""
    arr = pa.array(values, pa.string())
    width = max(len(v) for v in values if v is not None)
    strided = pc.if_else(pc.is_null(arr), pa.scalar(None, pa.string()),
                         pc.coalesce(arr, pa.scalar("0" * width)))  # null slots keep `width` bytes
    yield pa.chunked_array([arr[:7], arr[7:7], arr[7:]])
    yield pa.chunked_array([strided])
    yield pa.chunked_array([pa.array(["x"] + values)[1:]])  # chunk with a non-zero offset
    yield arr.cast(pa.binary())
    yield arr.cast(pa.large_string())
    yield pa.array([None if v is None else v.encode() for v in values], pa.binary(width))


@pytest.mark.parametrize("null_every", [0, 5])
def test_fixed_width_fast_path_equals_reference(null_every):
    """#10: hex hashes (fixed width) take the 64-bit-key path; same keep/cluster as the reference."""
    from fastdistill.curation import dedup

    values = _hex_column(np.random.default_rng(1), 3_000, 700, null_every)
    ref_keep, ref_cluster = first_occurrence_python(values)
    for arr in _arrow_variants(values):
        chunked = arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])
        assert dedup._first_occurrence_fixed_width(chunked) is not None, arr.type
        keep, cluster = first_occurrence_arrow(arr)
        assert np.array_equal(keep, ref_keep) and np.array_equal(cluster, ref_cluster), arr.type


def test_fixed_width_key_collisions_fall_back_exactly(monkeypatch, caplog):
    """A key shared by different values is caught by the byte-for-byte check and those groups are
    solved again with dictionary_encode: the result never depends on the key."""
    import logging

    from fastdistill.curation import dedup

    values = _hex_column(np.random.default_rng(2), 2_000, 300, 7)
    distinct = len(set(values))
    # multiplier 0: the key depends on the last 8 bytes only, so values ending alike collide
    values = [None if v is None else v[:56] + "deadbeef" for v in values]
    assert len(set(values)) == distinct > 100
    ref_keep, ref_cluster = first_occurrence_python(values)
    monkeypatch.setattr(dedup, "_M1", np.uint64(0))
    with caplog.at_level(logging.DEBUG, logger="fastdistill.curation.dedup"):
        keep, cluster = dedup._first_occurrence_fixed_width(pa.chunked_array([pa.array(values[:900]),
                                                                               pa.array(values[900:])]))
    assert "share a key with a different value" in caplog.text
    assert np.array_equal(keep, ref_keep) and np.array_equal(cluster, ref_cluster)
    # only some groups collide (with multiplier 0: rows ending in one of two suffixes), the rest are exact
    base = _hex_column(np.random.default_rng(4), 3_000, 400, 9)
    values = [v if v is None or v[0] not in "0123" else v[:56] + ("deadbeef" if v[0] in "01" else "cafebabe")
              for v in base]
    ref_keep, ref_cluster = first_occurrence_python(values)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="fastdistill.curation.dedup"):
        keep, cluster = first_occurrence_arrow(pa.array(values))
    assert "share a key with a different value" in caplog.text
    assert np.array_equal(keep, ref_keep) and np.array_equal(cluster, ref_cluster)


@pytest.mark.parametrize("values", [["ab", "cd", "ab", None], ["a" * 8, "b" * 16, "a" * 8], ["", "", None],
                                    [None, None], ["x" * 12, "y" * 12, "x" * 12]])
def test_other_shapes_take_the_dictionary_path(values):
    from fastdistill.curation import dedup

    arr = pa.chunked_array([pa.array(values, pa.string())])
    if any(v for v in values):
        assert dedup._first_occurrence_fixed_width(arr) is None
    keep, cluster = first_occurrence_arrow(arr)
    ref_keep, ref_cluster = first_occurrence_python(values)
    assert keep.tolist() == ref_keep.tolist() and cluster.tolist() == ref_cluster.tolist()


@pytest.mark.parametrize("fmt", [None, "numpy", "arrow"])
def test_dedup_drop_equals_select_on_mapped_and_formatted_datasets(fmt):
    """The indices mapping deduplicate builds itself equals Dataset.select (also on a dataset that
    already has one), keeps the format, and num_proc does not change the rows."""
    rng = np.random.default_rng(3)
    base = datasets.Dataset.from_dict({"text": [f"row {i % 40}" for i in rng.integers(0, 200, 500)],
                                       "id": list(range(500))})
    for ds in (base, base.select(rng.permutation(500)[:400]), base.select(range(100, 300))):
        ds = ds.with_format(fmt)
        hashed = C.compute_hash(ds, "text")
        keep, _ = first_occurrence_python(list(hashed.with_format(None)["hash"]))
        expected = hashed.select(np.flatnonzero(keep).tolist())
        for num_proc in (None, 2):
            out = C.deduplicate(C.compute_hash(ds, "text", num_proc=num_proc), "hash", num_proc=num_proc)
            assert out.format["type"] == fmt
            assert out.with_format(None).to_dict() == expected.with_format(None).to_dict()
        assert out.with_format(None)[7] == expected.with_format(None)[7]
        assert C.deduplicate(out, "hash") is out  # nothing left to drop
    # duplicates only at the end: a contiguous prefix is kept (a slice, as select does)
    ds = datasets.Dataset.from_dict({"h": ["a" * 8, "b" * 8, "c" * 8, "a" * 8]})
    out = C.deduplicate(ds, "h")
    assert out["h"] == ["a" * 8, "b" * 8, "c" * 8] and out._indices is None


def test_dedup_rejects_bad_arguments():
    ds = datasets.Dataset.from_dict({"h": ["a"]})
    with pytest.raises(ValueError, match="mode"):
        C.deduplicate(ds, "h", mode="delete")
    with pytest.raises(ValueError, match="method"):
        C.deduplicate(ds, "h", method="fuzzy")
    with pytest.raises(KeyError, match="nope"):
        C.deduplicate(ds, "nope")


def _near_dup_data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    vocab = [f"tok{i}" for i in range(5000)]
    originals = [" ".join(rng.choice(vocab, 120)) for _ in range(n)]
    copies = []
    for i in range(0, n, 3):
        words = originals[i].split()
        words[60] = "renamed_identifier"  # identifier-level edit
        copies.append("\n  ".join(" ".join(words[j:j + 6]) for j in range(0, len(words), 6)))  # + whitespace
    return originals, copies


@pytest.mark.parametrize("backend", ["rensa", "datasketch"])
def test_minhash_catches_near_copies_and_keeps_distinct(backend):
    originals, copies = _near_dup_data()
    ds = datasets.Dataset.from_dict({"text": originals + copies + ["", None]})
    out = C.deduplicate(ds, "text", method="minhash", threshold=0.8, mode="mark", cluster_column="cluster_id",
                        backend=backend)
    dup = np.array(out["is_duplicate"])
    n = len(originals)
    assert not dup[:n].any()  # distinct random rows are all kept
    assert dup[n:n + len(copies)].mean() >= 0.9  # near copies are caught
    assert not dup[-2:].any()  # empty / null rows are never near-duplicates
    cluster = np.array(out["cluster_id"])
    caught = np.flatnonzero(dup)
    assert np.array_equal(cluster[caught], (caught - n) * 3)  # points to its original
    again = C.deduplicate(ds, "text", method="minhash", threshold=0.8, mode="mark", backend=backend)
    assert list(again["is_duplicate"]) == dup.tolist()  # reproducible for a fixed seed
    dropped = C.deduplicate(ds, "text", method="minhash", threshold=0.8, backend=backend)
    assert len(dropped) == len(ds) - dup.sum()


def test_choose_num_bands():
    assert choose_num_bands(0.8, 128) == 16
    b = choose_num_bands(0.7, 128)
    assert 128 % b == 0 and 1 - (1 - 0.7 ** (128 // b)) ** b >= 0.9


@pytest.mark.slow
def test_dedup_identical_for_num_proc_1_and_2(monkeypatch):
    """num_proc spreads the per-row work (hashes, exact keys on threads, MinHash band keys in
    processes); the keep-first decision stays global, so every output is identical."""
    from fastdistill.curation import dedup

    monkeypatch.setattr(dedup, "_KEY_BLOCK", 64)  # several key blocks, so the thread pool really runs
    originals, copies = _near_dup_data(n=120)
    texts = originals + copies + originals[:40] + ["", None] * 3
    ds = datasets.Dataset.from_dict({"text": texts, "i": list(range(len(texts)))})
    results = []
    for num_proc in (1, 2):
        h = C.compute_hash(ds, "text", num_proc=num_proc, batch_size=50)
        exact = C.deduplicate(h, "hash", num_proc=num_proc, mode="mark", cluster_column="cluster_id")
        near = C.deduplicate(h, "text", method="minhash", num_proc=num_proc, mode="mark", cluster_column="cluster_id")
        near_drop = C.deduplicate(h, "text", method="minhash", num_proc=num_proc)
        keys = dedup.minhash_band_keys_dataset(ds, "text", num_proc=num_proc, batch_size=37)
        results.append((list(h["hash"]), list(exact["is_duplicate"]), list(exact["cluster_id"]),
                        list(near["is_duplicate"]), list(near["cluster_id"]), list(near_drop["i"]), keys.tolist()))
    assert results[0] == results[1]
    assert sum(results[0][1]) >= 40 + 2  # the exact copies (and repeated empties/nulls) are flagged
    assert sum(results[0][3]) >= len(copies) + 40  # near copies and exact copies
    # the band keys computed in processes are those of the row function on the whole column
    assert np.array_equal(np.array(results[0][6], dtype=np.uint64),
                          dedup.minhash_band_keys(pa.array(texts, pa.string())))
    ref_keep, ref_cluster = first_occurrence_python(results[0][0])
    assert results[1][1] == (~ref_keep).tolist() and results[1][2] == ref_cluster.tolist()


def test_rule_filter_rules_and_reasons():
    rows = ["def f(x):\n    return x\n", "def f(:\n", "x", "SELECT a FROM t", None, "print('TODO')"]
    ds = datasets.Dataset.from_dict({"code": rows, "id": list(range(len(rows)))})
    marked = C.rule_filter(ds, "code", min_len=3, parses_as="python", exclude_regex="TODO", mode="mark")
    assert marked["rule_reason"] == [None, "not_python", "too_short", "not_python", "null", "excluded_regex"]
    kept = C.rule_filter(ds, "code", min_len=3, parses_as="python", exclude_regex="TODO")
    assert kept["id"] == [0]
    sql = C.rule_filter(ds, "code", parses_as="sql", mode="mark")["rule_reason"]
    assert sql[3] is None and sql[1] == "not_sql"
    pred = C.rule_filter(ds, "code", predicate=lambda row: row["id"] % 2 == 0, predicate_on_row=True)
    assert pred["id"] == [0, 2]
    assert C.rule_filter(ds, "code", regex=r"^def ", max_len=12)["id"] == [1]
    with pytest.raises(KeyError, match="nope"):
        C.rule_filter(ds, "nope")


@pytest.mark.parametrize("text,expected", [
    ("```sql\nSELECT a FROM t;\n```", "SELECT a FROM t"),
    ("Sure! Here it is:\n```SQL\nselect * from t where x = ';'\n```\nHope this helps", "select * from t where x = ';'"),
    ("The query is SELECT name FROM users;;  ", "SELECT name FROM users"),
    ("SELECT 1; SELECT 2;", "SELECT 1"),
    ("```\nWITH c AS (SELECT 1) SELECT * FROM c\n```", "WITH c AS (SELECT 1) SELECT * FROM c"),
    ("SELECT a\nFROM t\n\nThis returns all a.", "SELECT a\nFROM t"),
    ("select a -- ; comment\nfrom t; drop table t", "select a -- ; comment\nfrom t"),
    ("no sql here", None),
    (None, None),
])
def test_extract_sql(text, expected):
    assert C.extract_sql(text) == expected


def test_clean_sql_output_step():
    ds = datasets.Dataset.from_dict({"completion": ["```sql\nSELECT 1;\n```", "nothing"], "k": [1, 2]})
    out = C.clean_sql_output(ds)
    assert out["pred_sql"] == ["SELECT 1", None] and out["k"] == [1, 2]


def test_score_and_keep_by_score():
    ds = datasets.Dataset.from_dict({
        "exec_match": [True, False, None, True],
        "tests_passed": [True, True, False, None],
        "kill_rate": [1.0, 0.5, None, None],
        "id": [0, 1, 2, 3],
    })
    scored = C.score_from_exec_eval(ds)
    assert scored["score"] == pytest.approx([1.0, 0.375, 0.0, 0.5])
    assert C.keep_by_score(scored, min_score=0.5)["id"] == [0, 3]
    assert C.keep_by_score(scored, min_score=0.0, top_k=2)["id"] == [0, 3]
    with pytest.raises(KeyError, match="exec_match"):
        C.score_from_exec_eval(datasets.Dataset.from_dict({"x": [1]}))


def test_reports_and_gate(tmp_path):
    raw = datasets.Dataset.from_dict({"text": ["a", "a", "b", "c"], "exec_match": [True, True, False, True],
                                      "exec_error": [None, None, "syntax_error", None]})
    hashed = C.compute_hash(raw, "text")
    dedup = C.deduplicate(hashed, "hash")
    scored = C.score_from_exec_eval(dedup)
    kept = C.keep_by_score(scored, min_score=1.0)
    steps = [{"name": "deduplicate", "params": {"column": "hash"}, "rows_in": 4, "rows_out": 3, "time_s": 0.5},
             {"name": "keep_by_score", "params": {"min_score": 1.0}, "rows_in": 3, "rows_out": 2, "time_s": 0.0}]
    manifest = C.write_manifest(tmp_path, input_ds=raw, output_ds=kept, steps=steps)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["kept_row_hashes"] == kept["hash"] == manifest["kept_row_hashes"]
    assert on_disk["input"]["fingerprint"] == raw._fingerprint and on_disk["output"]["rows"] == 2
    assert on_disk["steps"][0]["rows_out"] == 3 and on_disk["versions"]["pyarrow"] == pa.__version__
    report = C.quality_report(kept, steps=steps, input_rows=4, evaluated_ds=scored, out_dir=tmp_path)
    m = report["metrics"]
    assert m["duplicate_ratio"] == pytest.approx(0.25)
    assert m["exec_match_rate"] == pytest.approx(2 / 3)
    assert m["exec_error_rate"] == pytest.approx(1 / 3)
    assert report["details"]["exec_error_classes"] == {"syntax_error": 1}
    assert json.loads((tmp_path / "quality_report.json").read_text())["metrics"]["rows_out"] == 2
    assert "exec_match_rate" in (tmp_path / "quality_report.md").read_text()
    timing = C.timing_report(steps, out_dir=tmp_path)
    assert timing["steps"][0]["rows_per_s"] == pytest.approx(8.0)
    assert json.loads((tmp_path / "timing_report.json").read_text())["total_time_s"] == pytest.approx(0.5)
    ok = C.quality_gate(report, {"min_rows_out": 2, "max_duplicate_ratio": 0.3})
    assert ok.passed and ok.failures == []
    bad = C.quality_gate(report, {"min_rows_out": 3, "min_exec_match_rate": 0.9, "max_duplicate_ratio": 0.3,
                                  "min_tests_pass_rate": 0.5})
    assert not bad.passed and len(bad.failures) == 3
    assert {f.split(":")[0] for f in bad.failures} == {"min_rows_out", "min_exec_match_rate", "min_tests_pass_rate"}
    with pytest.raises(ValueError, match="min_"):
        C.quality_gate(report, {"rows_out": 1})


def test_manifest_hashes_whole_row_without_hash_column(tmp_path):
    ds = datasets.Dataset.from_dict({"a": ["x", "y"], "b": [1, 2]})
    m = C.write_manifest(tmp_path / "m.json", output_ds=ds)
    assert m["kept_row_hashes"][0] == hashlib.sha256('["x",1]'.encode()).hexdigest()


def test_public_names_and_no_torch_import():
    for name in ["canonicalize", "compute_hash", "deduplicate", "rule_filter", "sqlite_exec_eval",
                 "score_from_exec_eval", "keep_by_score", "clean_sql_output", "write_manifest", "quality_report",
                 "timing_report", "quality_gate", "tests_exec_eval"]:
        assert callable(getattr(C, name)) and getattr(C, name).__doc__
    code = ("import fastdistill.curation, fastdistill.curation.cli, sys; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_nfc_prefilter_misses_no_character():
    """The Arrow path skips NFC for rows without NFC-unstable characters: check every BMP character
    alone, after a base letter, and before a combining accent, against unicodedata."""
    chars = [chr(c) for c in range(0x21, 0x10000) if not (0xD800 <= c < 0xE000) and not chr(c).isspace()]
    texts = [t for ch in chars for t in ("e" + ch, ch + "\u0301", "\u1100" + ch)]
    got = canon.canonicalize_arrow(pa.table({"t": texts}), "t", whitespace="keep").to_pylist()
    # the prefilter never changes what the full Arrow NFC kernel gives ...
    assert got == pc.utf8_normalize(pa.array(texts), "NFC").to_pylist()
    # ... which equals Python's unicodedata for every character assigned in Python's Unicode version
    # (characters assigned later may have a combining class only the newer utf8proc knows).
    assigned = [(g, t) for g, t in zip(got, texts) if all(unicodedata.category(ch) != "Cn" for ch in t)]
    assert len(assigned) > 150_000
    assert all(g == unicodedata.normalize("NFC", t) for g, t in assigned)


def test_minhash_prefilter_changes_speed_not_result():
    from fastdistill.curation.dedup import _flat_shingle_hashes, minhash_duplicates, shingles

    originals, copies = _near_dup_data(n=150)
    texts = pa.chunked_array([pa.array(originals[:80] + ["", None, "a b", "  a  b "]),
                              pa.array(copies + originals[80:] + ["x y z"])])
    with_pre = minhash_duplicates(texts, threshold=0.8, progress=False)
    without = minhash_duplicates(texts, threshold=0.8, progress=False, prefilter=False)
    assert np.array_equal(with_pre[0], without[0]) and np.array_equal(with_pre[1], without[1])
    assert (~with_pre[0]).sum() >= len(copies) + 1  # copies and the whitespace variant of "a b"
    # the numpy n-gram hashes give exactly the shingle sets of the reference tokenizer
    sample = ["a b c d e f", "a b", "", None, " x y  z\tw v ", "b c d e f"]
    hashes, offsets = _flat_shingle_hashes(pa.array(sample), 5)
    sizes = np.diff(offsets).tolist()
    assert sizes == [len(shingles(t, 5)) for t in sample]
    assert hashes[1] == hashes[offsets[5]]  # "b c d e f" shared by rows 0 and 5

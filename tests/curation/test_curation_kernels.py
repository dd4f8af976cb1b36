"""The compiled curation kernels against their Python references (Liger-style: fast core vs naive)."""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdistill.curation._kernels import (
    COLD_LEADS,
    WS_RANGES,
    _lead_table,
    _sha256_kernel,
    collapse_whitespace,
    nfc_rows_text,
    ordered_lsh_pass,
    word_ngram_hashes,
)
from fastdistill.curation.canonical import _collapsed_text_sha256, canonical_text, canonicalize_arrow, sha256_hex
from fastdistill.curation.dedup import shingles

WHITESPACE = "".join(chr(c) for lo, hi in WS_RANGES for c in range(lo, hi + 1))
# whitespace of every UTF-8 length, characters NFC changes or composes, non-Latin letters
ALPHABET = st.sampled_from(list(WHITESPACE) + list("ab_(x)=:#'\"\\") + ["\u0301", "e", "\u212b", "\u1100", "\u1161",
                                                                     "é", "日", "λ", "\U0001f600", "\u0000"])
TEXTS = st.one_of(st.none(), st.text(alphabet=ALPHABET, max_size=40), st.text(max_size=30))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _collapse_reference(value: str) -> str:
    return " ".join(value.split())  # str.split() splits on exactly the str.isspace() runs


# Long rows for the 32-byte block loop: indentation and blank runs across block edges, multi-byte
# whitespace (2, 3 bytes), NFC candidates (combining accent, Angstrom sign, Hangul jamo), letters of
# the lead bytes the blocks skip (é, д, 日) and of those they look up (→, λ, emoji).
TOKENS = st.sampled_from(["\n    ", "\n        ", "  ", " ", "\t", "\r\n", "def f(x):", "return x", "a", "=", "é",
                          "д", "日本", "→", "λ", "\U0001f600", "\u0301", "\u212b", "\u1161", "\u00a0", "\u0085",
                          "\u1680", "\u2000", "\u2028", "\u3000", "\u202f \u205f"])
LONG_TEXTS = st.one_of(st.none(), st.lists(TOKENS, max_size=80).map("".join))


def _check_kernels_against_reference(arr: pa.Array) -> None:
    got, nfc_rows = collapse_whitespace(arr)
    expected = [None if v is None else _collapse_reference(v) for v in arr.to_pylist()]
    assert got.to_pylist() == expected
    for i, v in enumerate(arr.to_pylist()):
        if v is not None and i not in set(nfc_rows):  # NFC changes nothing in another row that collapsing keeps
            assert _collapse_reference(unicodedata.normalize("NFC", v)) == _collapse_reference(v)
    # only the words NFC can change are normalised in those rows
    fixed = nfc_rows_text(arr, nfc_rows).to_pylist()
    assert [_collapse_reference(f) for f in fixed] == [
        _collapse_reference(unicodedata.normalize("NFC", arr[int(i)].as_py())) for i in nfc_rows]
    # the digest of each row's canonical form in one pass (OpenSSL from compiled code) or hashlib
    fused = _collapsed_text_sha256(arr)
    assert fused is None or fused.to_pylist() == [None if v is None else sha256_hex(canonical_text(v))
                                                  for v in arr.to_pylist()]
    # the canonical form (NFC then collapse) through the kernel is the reference, bit for bit
    canon = canonicalize_arrow(pa.table({"t": arr}), "t")
    assert canon.to_pylist() == [None if v is None else canonical_text(v) for v in arr.to_pylist()]


@SETTINGS
@given(st.lists(TEXTS, max_size=12), st.integers(0, 3))
def test_collapse_kernel_equals_reference_and_flags_every_non_nfc_row(values, start):
    _check_kernels_against_reference(pa.array(values, pa.string()).slice(min(start, len(values))))  # sliced: offsets


@SETTINGS
@given(st.lists(LONG_TEXTS, max_size=8), st.integers(0, 2))
def test_block_loop_of_long_rows_equals_reference(values, start):
    _check_kernels_against_reference(pa.array(values, pa.string()).slice(min(start, len(values))))


def test_lead_bytes_the_blocks_skip_start_no_whitespace_or_nfc_candidate():
    table, coarse = _lead_table()
    assert coarse  # the shortcut is on with this Python's Unicode tables
    for lo, hi in COLD_LEADS:
        for cp in range(0x80, 0x10000):
            ch = chr(cp) if not 0xD800 <= cp < 0xE000 else None
            if ch and lo <= ch.encode()[0] <= hi:
                assert not ch.isspace() and unicodedata.is_normalized("NFC", ch) and not unicodedata.combining(ch)
    # the table looks at every whitespace character of more than one byte
    for c in WHITESPACE:
        b = c.encode()
        assert len(b) == 1 or table[b[0] << 8 | b[1]] == 1


def _edge_rows() -> list[str]:
    # every position of a multi-byte whitespace character / NFC candidate / run against the 32-byte
    # block edges, in rows that end at the buffer's end and rows followed by another row
    values = []
    for ch in ["\u3000", "\u00a0", "\u2000", "\u0301", "\u212b", "→", "é", "日", "\U0001f600", "\n   \t "]:
        for k in range(58, 70):
            values += ["a" * k + ch + "b" * 40, "x" * k + ch, ch + "y" * k + ch + " " * 3]
    return values


def test_block_loop_characters_across_block_edges_and_row_ends():
    _check_kernels_against_reference(pa.array(_edge_rows()))
    _check_kernels_against_reference(pa.array(_edge_rows()[::-1]))


def test_block_loop_without_the_cold_lead_shortcut(monkeypatch):
    # the path a Unicode version that breaks COLD_LEADS would take: every lead byte is looked up
    from fastdistill.curation import _kernels

    table, _ = _lead_table()
    monkeypatch.setattr(_kernels, "_lead_table", lambda: (table, False))
    _check_kernels_against_reference(pa.array(_edge_rows() + ["\n    ".join(["résumé д 日本 x\u0301"] * 20)]))


def test_openssl_kernel_loads_on_linux():
    import sys

    # the GIL-free SHA-256 is what makes hashing scale over threads; on Linux it must load
    assert _sha256_kernel() is not None or not sys.platform.startswith("linux")


def test_collapse_kernel_every_whitespace_character_and_ends():
    for ch in WHITESPACE:
        values = [f"{ch}a{ch}{ch}b{ch}", ch * 3, f"x{ch}y"]
        got, _ = collapse_whitespace(pa.array(values))
        assert got.to_pylist() == ["a b", "", "x y"], hex(ord(ch))


@SETTINGS
@given(st.lists(TEXTS, max_size=10), st.integers(1, 6))
def test_word_ngram_hashes_are_the_shingle_sets(values, ngram):
    hashes, offsets = word_ngram_hashes(pa.array(values, pa.string()), ngram)
    assert offsets[0] == 0 and offsets[-1] == len(hashes) and np.all(np.diff(offsets) >= 0)
    by_shingle: dict[str, int] = {}
    for i, v in enumerate(values):
        row = hashes[offsets[i]:offsets[i + 1]].tolist()
        sh = shingles(v, ngram)
        assert len(row) == len(sh)
        for s, h in zip(sh, row):  # one hash per shingle, equal shingles <=> equal hashes (no collision here)
            assert by_shingle.setdefault(s, h) == h
    assert len(set(by_shingle.values())) == len(by_shingle)


def _ordered_pass_reference(sig, keys, nonempty, threshold):
    """The insert-if-no-match pass written plainly: compare with every kept row sharing a band key."""
    kept: list[int] = []
    dup = np.zeros(len(sig), dtype=bool)
    match = np.arange(len(sig))
    for i in range(len(sig)):
        if not nonempty[i]:
            continue
        for j in kept:  # kept is increasing
            if np.any(keys[i] == keys[j]) and np.count_nonzero(sig[i] == sig[j]) / sig.shape[1] >= threshold:
                dup[i], match[i] = True, j
                break
        else:
            kept.append(i)
    return dup, match


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60), st.sampled_from([0.5, 0.7, 0.8, 1.0]))
def test_ordered_lsh_pass_equals_the_plain_loop(seed, n, threshold):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 6, size=(max(1, n // 4), 16), dtype=np.uint32)
    sig = base[rng.integers(0, len(base), n)].copy()  # rows near one of a few originals
    sig[rng.random(sig.shape) < 0.25] = rng.integers(0, 6, dtype=np.uint32)
    keys = np.stack([sig[:, b * 4:(b + 1) * 4].astype(np.uint64) @ np.array([1, 7, 49, 343], np.uint64)
                     for b in range(4)], axis=1)
    nonempty = rng.random(n) < 0.9
    dup, match = ordered_lsh_pass(sig, keys, nonempty, threshold)
    ref_dup, ref_match = _ordered_pass_reference(sig, keys, nonempty, threshold)
    assert np.array_equal(dup, ref_dup) and np.array_equal(match, ref_match)


def test_nfc_candidates_are_cached_per_unicode_version(tmp_path, monkeypatch):
    from fastdistill.curation._kernels import _find_nfc_candidates, nfc_candidates

    monkeypatch.setenv("FASTDISTILL_CACHE", str(tmp_path))
    nfc_candidates.cache_clear()
    try:
        first = nfc_candidates()  # scans and writes the cache
        assert [p.name for p in tmp_path.iterdir()] == [f"nfc_candidates_unicode_{unicodedata.unidata_version}.npy"]
        nfc_candidates.cache_clear()
        assert nfc_candidates() == first == _find_nfc_candidates()  # read back: the same list
        assert 0x0301 in first and ord("a") not in first
    finally:
        nfc_candidates.cache_clear()


def test_minhash_signatures_estimate_jaccard_without_bias():
    from fastdistill.curation._kernels import minhash_signatures

    rng = np.random.default_rng(0)
    errors = []
    for target in (0.3, 0.5, 0.7, 0.85, 0.95):
        for _ in range(40):
            shared = rng.integers(0, 2**63, int(200 * target), dtype=np.uint64)
            a = np.concatenate([shared, rng.integers(0, 2**63, 200 - len(shared), dtype=np.uint64)])
            b = np.concatenate([shared, rng.integers(0, 2**63, 200 - len(shared), dtype=np.uint64)])
            true = len(set(a.tolist()) & set(b.tolist())) / len(set(a.tolist()) | set(b.tolist()))
            sig = minhash_signatures(np.concatenate([a, b]), np.array([0, len(a), len(a) + len(b)]), 128, 42)
            errors.append(np.mean(sig[0] == sig[1]) - true)
    errors = np.array(errors)
    # 128 permutations: the standard error is at most sqrt(0.25 / 128) = 0.044 per pair
    assert abs(errors.mean()) < 0.01 and errors.std() < 0.05
    # the same tokens in another order and repeated give the same signature; an empty row stays at the maximum
    sig = minhash_signatures(np.array([5, 9, 7, 7, 9, 5], np.uint64), np.array([0, 3, 6, 6]), 16, 1)
    assert np.array_equal(sig[0], sig[1]) and np.all(sig[2] == np.iinfo(np.uint32).max)


def test_hashes_are_the_same_without_the_openssl_kernel(monkeypatch):
    """Where OpenSSL cannot be called from compiled code (not Linux, no libcrypto), hashlib hashes the
    canonical strings: same digests."""
    from fastdistill.curation import _kernels, canonical

    values = ["def f(x):\n    return  x\n", " e\u0301\u3000x ", None, "", "\t"] * 3
    table = pa.table({"t": pa.array(values, pa.string())})
    fused = canonical.hash_arrow(table, "t").to_pylist()
    monkeypatch.setattr(_kernels, "_sha256_kernel", lambda: None)
    assert canonical._collapsed_text_sha256(table.column("t")) is None
    assert canonical.hash_arrow(table, "t").to_pylist() == fused == [
        None if v is None else sha256_hex(canonical_text(v)) for v in values]

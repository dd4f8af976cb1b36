"""Exact and near-duplicate removal that keeps the first occurrence in dataset order.

Exact (``method="exact"``): no Python object per row, nulls count as one value. When every
non-null value of the column has the same byte length, a multiple of 8 (the 64-character hex
SHA-256 ``hash`` written by :func:`compute_hash`, raw digests), the bytes are read from the Arrow
buffers as uint64 words and mixed into one 64-bit key per row; one numpy sort of (key bits, row
number) packed in a uint64 groups equal keys in row order, so the first row of a group is its
first occurrence. That grouping is verified byte for byte (every later row of a group equals its
first row); groups where different values share a key are solved again on the values with the
general path below, so the result never depends on the key.
The general path, for any other scalar column, dictionary-encodes it with Arrow
(``pyarrow.compute.dictionary_encode``); Arrow assigns codes in order of first appearance, so a row
is a first occurrence exactly when its code is larger than every code before it -- one
``numpy.maximum.accumulate`` pass (checked at run time, with a ``numpy.unique(return_index=True)``
fallback). ``mode="drop"`` then attaches an indices mapping built from the numpy row positions
(:func:`fastdistill.curation._ds.select_rows`) instead of ``Dataset.select``, which makes a Python
``int`` per kept row.

Near (``method="minhash"``): MinHash signatures of word (or code-token) n-grams and LSH banding.
Rows are visited in order; a row is a duplicate when an LSH candidate among the rows already *kept*
has an estimated Jaccard (the fraction of equal signature values) >= ``threshold``
(insert-if-no-match), and its ``cluster_id`` is the index of the lowest such kept row. Defaults:
``num_perm=128``, ``ngram=5`` word shingles, ``threshold=0.8``, ``seed=42``; the number of LSH bands is
the smallest divisor of ``num_perm`` whose candidate probability at ``threshold`` is >= 0.9, since
candidates are verified. Rows with no tokens (empty or null) are never near-duplicates (exact dedup
handles them).
With word shingles (the default), no Python object is made per row or shingle: numba kernels hash
the word n-grams of the Arrow bytes (:func:`fastdistill.curation._kernels.word_ngram_hashes`),
compute the signatures (:func:`fastdistill.curation._kernels.minhash_signatures`) and run the
ordered pass (:func:`fastdistill.curation._kernels.ordered_lsh_pass`). Before it, a prefilter (a
16-function sketch of the same n-gram hashes, in the same compiled pass) drops the rows that share
no band with any other row, so the ordered pass sees only rows that may be near-duplicates (see
:func:`minhash_duplicates`). Code tokens, or ``backend="rensa"`` / ``"datasketch"``, take the
library path: ``str`` shingles per row, `rensa <https://github.com/beowolx/rensa>`_ (``RMinHash`` +
``RMinHashLSH``, Rust), or ``datasketch`` when rensa cannot be imported.

Both decisions are one global pass in the calling process, so the result is the same for any
``num_proc`` (``num_proc`` only parallelises the row-wise steps before; it is accepted here for a
uniform signature).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from fastdistill.curation._ds import add_columns, arrow_column, select_rows
# 64-bit mixing constants (golden ratio, splitmix64) for the numpy key hashes below
from fastdistill.curation._kernels import (
    _M1,
    _M2,
    as_string_array,
    minhash_signatures,
    minhash_sketch_keys,
    ordered_lsh_pass,
    signature_band_keys,
    word_ngram_hashes,
)

logger = logging.getLogger(__name__)

# ``backend`` name of the default word-shingle path (compiled kernels, no MinHash library)
COMPILED_BACKEND = "compiled"
MINHASH_DEFAULTS = {"num_perm": 128, "ngram": 5, "threshold": 0.8, "seed": 42, "tokenizer": "words"}
_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")


# ----------------------------------------------------------------------------------------------
# exact
# ----------------------------------------------------------------------------------------------

def first_occurrence_python(values: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation: ``(keep, cluster_id)`` with a Python dict, first occurrence kept."""
    first: dict = {}
    keep = np.zeros(len(values), dtype=bool)
    cluster = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        j = first.setdefault(v, i)
        keep[i] = j == i
        cluster[i] = j
    return keep, cluster


def first_occurrence_arrow(values: pa.Array | pa.ChunkedArray, num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, cluster_id)`` for an Arrow column: ``keep[i]`` is True for the first row of each value,
    ``cluster_id[i]`` is the index of that first row. Nulls are one value.

    Fixed-width binary-like values (the 64-character hex ``hash`` of :func:`compute_hash`, raw
    digests) take :func:`_first_occurrence_fixed_width` (64-bit keys, numpy sort, verified); any
    other column, or a key collision there, takes Arrow's ``dictionary_encode``. Both give the same
    answer. ``num_threads`` > 1 computes the 64-bit keys of blocks of rows on that many threads
    (the decision after it is one global pass, so the answer does not depend on it)."""
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    fast = _first_occurrence_fixed_width(values, num_threads)
    if fast is not None:
        return fast
    return _first_occurrence_dictionary(values)


def _first_occurrence_dictionary(values: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`first_occurrence_arrow` through ``pyarrow.compute.dictionary_encode`` (any scalar type)."""
    n = len(values)
    try:
        encoded = pc.dictionary_encode(values, null_encoding="encode")
    except pa.ArrowNotImplementedError as exc:
        raise TypeError(f"exact dedup needs a column of scalar values (got {values.type}); "
                        "run compute_hash first and deduplicate on its 'hash' column") from exc
    # int32 codes (Arrow's own index type) keep the temporaries at 4 bytes per row
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in encoded.chunks])
    del encoded
    running_max = np.maximum.accumulate(codes)
    keep = np.empty(n, dtype=bool)
    keep[0] = True
    np.greater(codes[1:], running_max[:-1], out=keep[1:])
    del running_max
    first_rows = np.flatnonzero(keep)
    if not np.array_equal(codes[first_rows], np.arange(len(first_rows))):  # codes not in appearance order
        logger.debug("dictionary codes not in first-appearance order; using numpy.unique")
        _, first_idx, inverse = np.unique(codes, return_index=True, return_inverse=True)
        keep = np.zeros(n, dtype=bool)
        keep[first_idx] = True
        return keep, first_idx[inverse].astype(np.int64)
    return keep, first_rows[codes]


_BINARY_LIKE = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
_VERIFY_BLOCK = 1 << 20


def _valid_rows_fixed_width(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """``(valid_mask, words)`` for one chunk whose non-null values all have the same byte length ``w``
    (a positive multiple of 8): ``words`` is a ``(n_valid, w // 8)`` uint64 view of those values, in
    row order (zero-copy when they lie back to back in the data buffer, as Arrow writes them).
    None when the chunk does not have that shape."""
    n = len(chunk)
    valid = (np.ones(n, dtype=bool) if chunk.null_count == 0
             else chunk.is_valid().to_numpy(zero_copy_only=False))
    if chunk.null_count == n:
        return valid, np.zeros((0, 0), dtype=np.uint64)
    t = chunk.type
    buffers = chunk.buffers()
    if pa.types.is_fixed_size_binary(t):
        w = t.byte_width
        if w == 0 or w % 8 or buffers[1] is None:
            return None
        data = np.frombuffer(buffers[1], dtype=np.uint8)[chunk.offset * w:(chunk.offset + n) * w]
        rows = data.reshape(n, w)
        if chunk.null_count:
            rows = rows[valid]
        return valid, rows.reshape(-1).view(np.uint64).reshape(len(rows), w // 8)
    if not any(f(t) for f in _BINARY_LIKE) or buffers[2] is None:
        return None
    off_type = np.int64 if (pa.types.is_large_string(t) or pa.types.is_large_binary(t)) else np.int32
    offsets = np.frombuffer(buffers[1], dtype=off_type, count=n + 1, offset=chunk.offset * np.dtype(off_type).itemsize)
    starts = offsets[:-1] if not chunk.null_count else offsets[:-1][valid]
    lengths = (offsets[1:] - offsets[:-1]) if not chunk.null_count else (offsets[1:] - offsets[:-1])[valid]
    w = int(lengths[0])
    if w == 0 or w % 8 or not np.all(lengths == w):
        return None
    data = np.frombuffer(buffers[2], dtype=np.uint8)
    nv = len(starts)
    s0 = int(starts[0])
    if np.array_equal(starts, np.arange(s0, s0 + nv * w, w, dtype=off_type)):  # back to back: zero-copy view
        rows = data[s0:s0 + nv * w]
    else:
        rows = data[starts[:, None].astype(np.int64) + np.arange(w)].reshape(-1)
    return valid, rows.view(np.uint64).reshape(nv, w // 8)


def _fixed_width_values(parts: list[np.ndarray], width: int) -> pa.ChunkedArray:
    """The ``(rows, width)`` uint64 word blocks as one ``fixed_size_binary`` Arrow column (zero-copy)."""
    fsb = pa.binary(8 * width)
    return pa.chunked_array([pa.FixedSizeBinaryArray.from_buffers(fsb, len(p), [None, pa.py_buffer(p)])
                             for p in parts], fsb)


def _verify_groups(parts: list[np.ndarray], width: int, first: np.ndarray) -> np.ndarray:
    """Rows whose value differs from the value of row ``first[row]`` (Arrow ``filter``/``take`` +
    ``equal``, in blocks so the temporaries stay bounded); an empty array when every group is exact."""
    values = _fixed_width_values(parts, width)
    bad = []
    for off in range(0, len(first), _VERIFY_BLOCK):
        firsts = first[off:off + _VERIFY_BLOCK]
        later = firsts != np.arange(off, off + len(firsts))
        if not later.any():
            continue
        same = pc.equal(values.slice(off, len(firsts)).filter(pa.array(later)), values.take(pa.array(firsts[later])))
        if not pc.all(same).as_py():
            same = np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)
            bad.append(off + np.flatnonzero(later)[~same])
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


_KEY_BLOCK = 1 << 18


def _mix_keys(words: np.ndarray, k: np.ndarray) -> None:
    """64-bit key of each row of ``words`` (uint64 words of one value per row) into ``k``."""
    with np.errstate(over="ignore"):
        k[:] = words[:, 0]
        for j in range(1, words.shape[1]):
            k *= _M1
            k += words[:, j]
        k ^= k >> np.uint64(31)
        k *= _M2
        k ^= k >> np.uint64(29)


def _first_occurrence_fixed_width(values: pa.ChunkedArray, num_threads: int = 1
                                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`first_occurrence_arrow` for columns whose non-null values all have one byte length
    ``w`` (a multiple of 8), e.g. the hex SHA-256 of :func:`compute_hash`; None for other columns.

    Each value's bytes, read as ``w / 8`` uint64 words straight from the Arrow buffers, are mixed
    into a 64-bit key (multiply-add + splitmix64 finaliser; no Python object per row). The top
    ``64 - b`` key bits and the row number (``b`` bits) are packed into one uint64 and sorted, so
    equal keys are adjacent and in row order: the first row of each run is the first occurrence.
    The grouping is then verified exactly: every later row of a group must be byte-for-byte equal
    to the group's first row (Arrow ``filter``/``take`` + ``equal``). Groups where different values
    share a key (expected now and then: ~40 key bits at 10M rows) are solved again on their values
    with ``dictionary_encode``, so the result never depends on the key.
    """
    n = len(values)
    valid = np.empty(n, dtype=bool)
    parts: list[np.ndarray] = []
    width = None
    pos = 0
    for chunk in values.chunks:
        got = _valid_rows_fixed_width(chunk)
        if got is None:
            return None
        chunk_valid, words = got
        valid[pos:pos + len(chunk)] = chunk_valid
        pos += len(chunk)
        if len(words):
            if width not in (None, words.shape[1]):
                return None
            width = words.shape[1]
            parts.append(words)
    cluster = np.arange(n, dtype=np.int64)
    n_valid = sum(len(p) for p in parts)
    if n_valid:
        keys = np.empty(n_valid, dtype=np.uint64)
        blocks, at = [], 0
        for words in parts:  # blocks of <= _KEY_BLOCK rows: bounded temporaries, and units of parallel work
            for off in range(0, len(words), _KEY_BLOCK):
                block = words[off:off + _KEY_BLOCK]
                blocks.append((block, keys[at + off:at + off + len(block)]))
            at += len(words)
        if num_threads > 1 and len(blocks) > 1:
            # numpy releases the GIL in these ufunc loops, so threads use several cores with no copies
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(num_threads) as pool:
                list(pool.map(lambda wk: _mix_keys(*wk), blocks))
        else:
            for words, k in blocks:
                _mix_keys(words, k)
        # One sort of (key bits, row) packed in a uint64: equal keys end up adjacent, in row order, so the
        # first of a run is the group's first occurrence. (numpy sorts plain uint64 with SIMD, several
        # times faster than argsort.) The key keeps its top 64 - b bits, b = bits of the row number.
        b = max(1, (n_valid - 1).bit_length())
        packed = keys
        del keys
        packed &= np.uint64(((1 << 64) - 1) ^ ((1 << b) - 1))
        packed |= np.arange(n_valid, dtype=np.uint64)
        packed.sort()
        rows_sorted = (packed & np.uint64((1 << b) - 1)).view(np.int64)
        packed >>= np.uint64(b)
        starts = np.empty(n_valid, dtype=bool)
        starts[0] = True
        np.not_equal(packed[1:], packed[:-1], out=starts[1:])
        del packed
        starts = np.flatnonzero(starts)
        local = np.empty(n_valid, dtype=np.int64)
        local[rows_sorted] = np.repeat(rows_sorted[starts], np.diff(starts, append=n_valid))
        del rows_sorted, starts
        bad = _verify_groups(parts, width, local)
        if len(bad):  # keys shared by different values: solve those groups again on the values themselves
            logger.debug("%d rows share a key with a different value; re-solving their groups exactly", len(bad))
            again = np.flatnonzero(np.isin(local, np.unique(local[bad])))
            _, sub_cluster = _first_occurrence_dictionary(_fixed_width_values(parts, width).take(pa.array(again)))
            local[again] = again[sub_cluster]
        vidx = np.flatnonzero(valid) if n_valid < n else None
        if vidx is None:
            cluster = local
        else:
            cluster[vidx] = vidx[local]
    if n_valid < n:
        nulls = np.flatnonzero(~valid)
        cluster[nulls] = nulls[0]
    return cluster == np.arange(n), cluster


# ----------------------------------------------------------------------------------------------
# minhash
# ----------------------------------------------------------------------------------------------

def shingles(text: str | None, ngram: int = 5, tokenizer: str = "words") -> list[str]:
    """The n-gram shingles of one text: ``"words"`` splits on whitespace, ``"code"`` also splits
    punctuation (``\\w+|[^\\w\\s]``) so ``f(x)`` and ``f( x )`` agree. A text shorter than ``ngram``
    tokens gives one shingle of all its tokens; an empty text gives none."""
    if not text:
        return []
    if tokenizer == "words":
        tokens = text.split()
    elif tokenizer == "code":
        tokens = _CODE_TOKEN.findall(text)
    else:
        raise ValueError(f"tokenizer must be 'words' or 'code', got {tokenizer!r}")
    if len(tokens) <= ngram:
        return [" ".join(tokens)] if tokens else []
    # zip of shifted token lists + map(str.join) keeps the loop in C (about 2x a list comprehension)
    return list(map(" ".join, zip(*[tokens[i:] for i in range(ngram)])))


def choose_num_bands(threshold: float, num_perm: int, min_recall: float = 0.9) -> int:
    """Smallest number of LSH bands dividing ``num_perm`` whose probability of making a pair with
    Jaccard ``threshold`` a candidate is at least ``min_recall`` (candidates are verified after)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    for b in range(1, num_perm + 1):
        if num_perm % b:
            continue
        r = num_perm // b
        if 1.0 - (1.0 - threshold ** r) ** b >= min_recall:
            return b
    return num_perm


class _Backend:
    """MinHash + LSH through rensa (preferred) or datasketch (fallback)."""

    def __init__(self, num_perm: int, seed: int, threshold: float, backend: str | None):
        self.num_perm, self.seed, self.threshold = num_perm, seed, threshold
        self.num_bands = choose_num_bands(threshold, num_perm)
        if backend in (None, "rensa"):
            try:
                import rensa  # Rust MinHash/LSH: the fastest maintained option measured here

                self.name = "rensa"
                self._rensa = rensa
                self.lsh = rensa.RMinHashLSH(threshold, num_perm, self.num_bands)
                return
            except ImportError:
                if backend == "rensa":
                    raise
                logger.warning("rensa is not importable; falling back to datasketch for MinHash")
        if backend not in (None, "rensa", "datasketch"):
            raise ValueError(f"backend must be 'rensa' or 'datasketch', got {backend!r}")
        import datasketch  # widely used pure-Python MinHash/LSH, the fallback

        self.name = "datasketch"
        self._ds = datasketch
        self.lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm,
                                         params=(self.num_bands, num_perm // self.num_bands))

    def signatures(self, shingle_sets: list[list[str]]) -> list:
        if self.name == "rensa":
            return self._rensa.RMinHash.from_token_sets(shingle_sets, self.num_perm, self.seed)
        out = []
        for s in shingle_sets:
            m = self._ds.MinHash(num_perm=self.num_perm, seed=self.seed)
            m.update_batch([x.encode("utf-8") for x in s])
            out.append(m)
        return out

    def query(self, mh) -> list[int]:
        return self.lsh.query(mh)

    def insert(self, key: int, mh) -> None:
        self.lsh.insert(key, mh)



def _flat_shingle_hashes(chunk: pa.Array | pa.ChunkedArray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Word n-gram hashes of every row, flat (u64) + row offsets (int64), with no Python object per
    token: :func:`fastdistill.curation._kernels.word_ngram_hashes` (one numba pass over the bytes).
    A row with fewer than ``ngram`` words gives one hash of all its words, an empty row none -- the
    same sets as :func:`shingles`."""
    return word_ngram_hashes(as_string_array(chunk), ngram)


_PREFILTER_BANDS, _PREFILTER_ROWS = 8, 2


def minhash_band_keys(texts: pa.Array | pa.ChunkedArray, *, ngram: int = 5, seed: int = 42) -> np.ndarray:
    """Batched row function of the MinHash prefilter: ``(n, 8)`` uint64 LSH band keys per row.

    A small MinHash sketch (16 hash functions over the n-gram hashes of :func:`_flat_shingle_hashes`,
    computed in the same compiled pass, :func:`fastdistill.curation._kernels.minhash_sketch_keys`),
    cut into 8 bands of 2 rows; each band is folded into one 64-bit key. Rows with no token get key 0
    in every band (they are never candidates). The keys of a row depend on that row alone, so any
    split of the rows into batches, processes or Ray blocks gives the same keys.
    """
    texts = pa.chunked_array([texts]) if isinstance(texts, pa.Array) else texts
    parts = []
    for chunk in texts.chunks:
        parts.append(minhash_sketch_keys(as_string_array(chunk), ngram, seed, _PREFILTER_BANDS * _PREFILTER_ROWS,
                                         _PREFILTER_BANDS))
    return np.concatenate(parts) if parts else np.zeros((0, _PREFILTER_BANDS), dtype=np.uint64)


def minhash_candidates(band_keys: np.ndarray) -> np.ndarray:
    """Global half of the prefilter: bool mask of rows sharing at least one band key with another row.

    A pair with Jaccard J shares a band with probability 1 - (1 - J**2)**8 (0.995 at J = 0.7,
    0.99997 at 0.85); rows sharing no band with any other row cannot be near-duplicates of it.
    """
    n = len(band_keys)
    candidate = np.zeros(n, dtype=bool)
    empty = band_keys[:, 0] == 0 if n else np.zeros(0, dtype=bool)
    for b in range(band_keys.shape[1] if n else 0):
        key = band_keys[:, b][~empty]
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        candidate[~empty] |= counts[inverse] > 1
    return candidate


def _candidate_rows(texts: pa.ChunkedArray, *, ngram: int, seed: int, batch_size: int) -> np.ndarray:
    """Bool mask of rows that may have a near-duplicate (:func:`minhash_band_keys` batch by batch,
    then :func:`minhash_candidates`)."""
    keys = [minhash_band_keys(chunk.slice(off, batch_size), ngram=ngram, seed=seed)
            for chunk in texts.chunks for off in range(0, len(chunk), batch_size)]
    if not keys:
        return np.zeros(0, dtype=bool)
    return minhash_candidates(np.concatenate(keys))


def minhash_verified_pass(candidate_texts: pa.ChunkedArray | pa.Array, rows: np.ndarray, *, threshold: float = 0.8,
                          num_perm: int = 128, ngram: int = 5, seed: int = 42, tokenizer: str = "words",
                          backend: str | None = None, batch_size: int = 10_000, progress: bool = True
                          ) -> tuple[np.ndarray, np.ndarray, str]:
    """The ordered insert-if-no-match pass over the rows that may be near-duplicates.

    ``candidate_texts[k]`` is the text of row ``rows[k]`` (``rows`` increasing). Returns
    ``(is_duplicate, cluster_id, backend_name)`` for those rows, where ``cluster_id`` is the row
    number of the lowest kept row that a duplicate matches (its own row number when kept).
    """
    if isinstance(candidate_texts, pa.Array):
        candidate_texts = pa.chunked_array([candidate_texts])
    rows = np.asarray(rows, dtype=np.int64)
    dup = np.zeros(len(rows), dtype=bool)
    cluster = rows.copy()
    if backend is None and tokenizer == "words":
        _verified_pass_on_hashes(candidate_texts, rows, dup, cluster, threshold=threshold, num_perm=num_perm,
                                 ngram=ngram, seed=seed, batch_size=batch_size, progress=progress)
        return dup, cluster, COMPILED_BACKEND
    engine = _Backend(num_perm, seed, threshold, backend)
    kept_sigs: dict[int, object] = {}
    bar = tqdm(total=len(rows), desc=f"minhash dedup ({engine.name})", unit="rows",
               disable=not progress or len(rows) < 50_000)
    for off in range(0, len(rows), batch_size):
        # Python strings exist for one batch at a time only.
        batch = candidate_texts.slice(off, batch_size).to_pylist()
        sets = [shingles(t, ngram, tokenizer) for t in batch]
        sigs = engine.signatures(sets)
        for k, (i, s, mh) in enumerate(zip(rows[off:off + batch_size].tolist(), sets, sigs)):
            if not s:
                continue
            match = None
            for j in sorted(engine.query(mh)):
                if mh.jaccard(kept_sigs[j]) >= threshold:
                    match = j
                    break
            if match is None:
                engine.insert(i, mh)
                kept_sigs[i] = mh
            else:
                dup[off + k] = True
                cluster[off + k] = match
        bar.update(len(batch))
    bar.close()
    return dup, cluster, engine.name


def _verified_pass_on_hashes(texts: pa.ChunkedArray, rows: np.ndarray, dup: np.ndarray, cluster: np.ndarray, *,
                             threshold: float, num_perm: int, ngram: int, seed: int, batch_size: int,
                             progress: bool) -> None:
    """The ordered insert-if-no-match pass with no Python object per shingle or row (words, default).

    The shingles of a batch are the 64-bit n-gram hashes of :func:`_flat_shingle_hashes`; their
    MinHash signatures (:func:`fastdistill.curation._kernels.minhash_signatures`) and the ordered
    pass itself (LSH buckets of the kept rows, a match when the fraction of equal signature values is
    >= the threshold, :func:`fastdistill.curation._kernels.ordered_lsh_pass`) are compiled loops. On
    code-shaped rows the ``str`` shingles and ``RMinHashLSH`` calls of the library path took ~70 us a
    row; this takes ~15.
    """
    sigs, nonempty = [], []
    for off in tqdm(range(0, len(rows), batch_size), desc="minhash signatures", unit="batch",
                    disable=not progress or len(rows) < 50_000):
        hashes, offsets = _flat_shingle_hashes(texts.slice(off, batch_size), ngram)
        sigs.append(minhash_signatures(hashes, offsets, num_perm, seed))
        nonempty.append(offsets[1:] > offsets[:-1])
    if not sigs:
        return
    sig = np.concatenate(sigs)
    bands = choose_num_bands(threshold, num_perm)
    is_dup, match = ordered_lsh_pass(sig, signature_band_keys(sig, bands), np.concatenate(nonempty), threshold)
    dup[:] = is_dup
    cluster[:] = rows[match]


def uses_prefilter(tokenizer: str, threshold: float, prefilter: bool = True) -> bool:
    """Whether :func:`minhash_duplicates` runs the bulk prefilter for these settings."""
    return tokenizer == "words" and prefilter and threshold >= 0.5


def minhash_duplicates(texts: pa.ChunkedArray | pa.Array, *, threshold: float = 0.8, num_perm: int = 128,
                       ngram: int = 5, seed: int = 42, tokenizer: str = "words", backend: str | None = None,
                       batch_size: int = 10_000, progress: bool = True, prefilter: bool = True,
                       band_keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(keep, cluster_id, backend_name)`` for a string column by MinHash-LSH (see the module docstring).

    With the ``"words"`` tokenizer, ``prefilter=True`` and ``threshold >= 0.5``, a bulk pass first
    finds the rows that may have a near-duplicate at all (:func:`minhash_band_keys`, a per-row
    function, then :func:`minhash_candidates`, one global ``numpy.unique`` per band); the others
    cannot match anything and are kept without further work. The ordered insert-if-no-match pass
    with verified Jaccard (:func:`minhash_verified_pass`, rensa or datasketch) then runs on the
    candidate rows only. ``band_keys`` may be given when they were computed elsewhere (in
    parallel processes or Ray workers). The prefilter changes speed, not the definition: a pair at
    Jaccard 0.7 survives it with probability 0.995, at 0.85 with 0.99997 (measured recall in
    ``benchmarks/bench_curation.py``).
    """
    if isinstance(texts, pa.Array):
        texts = pa.chunked_array([texts])
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        raise TypeError(f"minhash dedup needs a string column, got {texts.type}")
    n = len(texts)
    if uses_prefilter(tokenizer, threshold, prefilter) and n:
        if band_keys is None:
            mask = _candidate_rows(texts, ngram=ngram, seed=seed, batch_size=max(batch_size, 50_000))
        else:
            mask = minhash_candidates(band_keys)
        rows = np.flatnonzero(mask)
        logger.debug("minhash prefilter: %d of %d rows are candidates", len(rows), n)
        cand = texts.take(pa.array(rows)) if len(rows) < n else texts
    else:
        rows, cand = np.arange(n), texts
    dup, sub_cluster, name = minhash_verified_pass(cand, rows, threshold=threshold, num_perm=num_perm, ngram=ngram,
                                                   seed=seed, tokenizer=tokenizer, backend=backend,
                                                   batch_size=batch_size, progress=progress)
    keep = np.ones(n, dtype=bool)
    cluster = np.arange(n, dtype=np.int64)
    keep[rows[dup]] = False
    cluster[rows] = sub_cluster
    return keep, cluster, name


# ----------------------------------------------------------------------------------------------
# step
# ----------------------------------------------------------------------------------------------

BAND_KEYS_COLUMN = "__minhash_band_keys"


def band_keys_to_arrow(keys: np.ndarray) -> pa.Array:
    """``(n, 8)`` uint64 band keys as an Arrow ``fixed_size_list<uint64>[8]`` column (zero-copy)."""
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    return pa.FixedSizeListArray.from_arrays(pa.array(keys.reshape(-1)), keys.shape[1])


def band_keys_from_arrow(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Inverse of :func:`band_keys_to_arrow` for a (chunked) column."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    width = column.type.list_size
    parts = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, width) for c in chunks if len(c)]
    return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.uint64)


def minhash_band_keys_dataset(ds, column: str, *, ngram: int = 5, seed: int = 42, num_proc: int | None = None,
                              batch_size: int = 10_000) -> np.ndarray:
    """:func:`minhash_band_keys` of every row of ``ds[column]``, computed with ``datasets.map`` on
    ``num_proc`` processes (the per-row half of MinHash dedup); ``(len(ds), 8)`` uint64."""
    from fastdistill.curation._ds import map_arrow_columns

    keyed = map_arrow_columns(
        ds.select_columns([column]),
        lambda t: {BAND_KEYS_COLUMN: band_keys_to_arrow(minhash_band_keys(t.column(column), ngram=ngram, seed=seed))},
        num_proc=num_proc, batch_size=batch_size, desc="minhash band keys", params=dict(ngram=ngram, seed=seed))
    return band_keys_from_arrow(arrow_column(keyed, BAND_KEYS_COLUMN))


def deduplicate(ds, column: str, *, method: str = "exact", threshold: float = 0.8, mode: str = "drop",
                num_proc: int | None = None, num_perm: int = 128, ngram: int = 5, seed: int = 42,
                tokenizer: str = "words", cluster_column: str | None = None, backend: str | None = None,
                mark_column: str = "is_duplicate"):
    """Remove (``mode="drop"``) or flag (``mode="mark"``, bool column ``is_duplicate``) duplicate rows.

    The first occurrence in dataset order is kept, deterministically, as one global decision
    (identical for any ``num_proc``). See the module docstring for both methods.

    Args:
        ds: the ``datasets.Dataset``.
        column: the column compared. For ``"exact"`` any scalar column, normally ``hash`` from
            :func:`compute_hash`; for ``"minhash"`` a text column.
        method: ``"exact"`` or ``"minhash"``.
        threshold: MinHash: estimated Jaccard at or above which a row duplicates a kept row.
        mode: ``"drop"`` or ``"mark"``.
        num_proc: workers for the per-row work: exact dedup computes the 64-bit keys of the values
            on that many threads; MinHash computes the band keys of its prefilter in that many
            processes (``datasets.map``). The keep-first decision after it is one global pass, so
            the result is identical for every ``num_proc``.
        num_perm, ngram, seed, tokenizer, backend: MinHash settings (``backend`` None: compiled
            kernels for word shingles, rensa for code tokens; ``"rensa"`` / ``"datasketch"``: that
            library, with ``str`` shingles).
        cluster_column: if set (e.g. ``"cluster_id"``), add the index (in ``ds``) of the kept row
            each row duplicates (its own index for kept rows), so dropped rows can be inspected.
        mark_column: name of the flag column in mark mode.

    Returns:
        The deduplicated (or marked) Dataset; other rows keep their order and content.
    """
    if mode not in ("drop", "mark"):
        raise ValueError(f"mode must be 'drop' or 'mark', got {mode!r}")
    workers = max(1, int(num_proc or 1))
    if method == "exact":
        keep, cluster = first_occurrence_arrow(arrow_column(ds, column), num_threads=workers)
        used = "arrow"
    elif method == "minhash":
        band_keys = None
        if workers > 1 and len(ds) and uses_prefilter(tokenizer, threshold):
            band_keys = minhash_band_keys_dataset(ds, column, ngram=ngram, seed=seed, num_proc=workers)
        keep, cluster, used = minhash_duplicates(arrow_column(ds, column), threshold=threshold, num_perm=num_perm,
                                                 ngram=ngram, seed=seed, tokenizer=tokenizer, backend=backend,
                                                 band_keys=band_keys)
    else:
        raise ValueError(f"method must be 'exact' or 'minhash', got {method!r}")
    n_dup = int(len(keep) - keep.sum())
    logger.info("deduplicate(%s, method=%s via %s): %d of %d rows are duplicates", column, method, used, n_dup,
                len(keep))
    new = {mark_column: pa.array(~keep)} if mode == "mark" else {}
    if cluster_column:
        new[cluster_column] = pa.array(cluster)
    if new:
        ds = add_columns(ds, new, desc="deduplicate", params=dict(column=column, method=method, mode=mode))
    if mode == "mark":
        return ds
    if not n_dup:
        return ds
    return select_rows(ds, np.flatnonzero(keep), desc="deduplicate", params=dict(column=column, method=method))

"""Byte-level kernels of the curation hot paths, compiled with `numba <https://numba.pydata.org>`_.

Loops over the UTF-8 data buffer of an Arrow string array (or over hashes) that no Arrow kernel
does in one pass, and that cost most of the time on code-shaped rows (a few kB, newlines and
indentation in every row, a few non-ASCII characters). Each releases the GIL, so the batch threads
of one process use every core, and each is tested against a Python reference:

* :func:`collapse_whitespace` -- the ``"collapse"`` whitespace rule of
  :mod:`fastdistill.curation.canonical` (every run of ``str.isspace()`` characters becomes one
  space, no space at either end), flagging in the same pass the rows that NFC may change
  (:func:`nfc_rows_text` normalises only their affected words). It works on 32-byte blocks with
  LLVM vector instructions (:func:`_collapse_row`). On code rows: RE2's ``replace_substring_regex``
  with the same rule ran at ~160 MB/s here, a byte loop at ~650 MB/s, the blocks at ~1.6 GB/s.
* :func:`collapsed_sha256` -- the same rule with each row's SHA-256 (OpenSSL, the library
  ``hashlib`` uses) computed while the row is in a scratch buffer.
* :func:`word_ngram_hashes`, :func:`minhash_sketch_keys`, :func:`minhash_signatures`,
  :func:`ordered_lsh_pass` -- MinHash dedup on word shingles (words split as ``str.split()`` does)
  with no Python object per row or shingle.

numba (LLVM) is used rather than a C extension of our own: it is a maintained, widely installed
package with wheels for every platform we support, and the kernels stay readable Python. The few
vector operations the block loops need (load 32 bytes and compare, store 32 bytes, count trailing
zeros) are numba intrinsics written in generic LLVM IR, which LLVM lowers for the machine it runs
on (AVX2, SSE, NEON); there is no CPU-specific code path to keep in step. Each
kernel is compiled on first use (about a second; ``cache=True`` keeps the machine code on disk
for later processes). The byte classification (ASCII table, multi-byte whitespace, NFC
candidates) is written out in each loop: a shared helper returning a tuple made them 10x slower.
"""

from __future__ import annotations

import functools
import os
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# Code points for which ``str.isspace()`` is true (a test checks it against every code point).
WS_RANGES = [(0x09, 0x0D), (0x1C, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
             (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]


def _bitmap(codepoints) -> np.ndarray:
    bm = np.zeros((sys.maxunicode + 1) // 8, dtype=np.uint8)
    cps = np.fromiter(codepoints, dtype=np.int64)
    np.bitwise_or.at(bm, cps >> 3, (1 << (cps & 7)).astype(np.uint8))
    return bm


@functools.lru_cache(maxsize=1)
def _ws_tables() -> tuple[np.ndarray, np.ndarray]:
    """(ASCII whitespace table, whitespace bitmap over every code point), built once."""
    ascii_ws = np.zeros(256, dtype=np.uint8)
    ws = [c for lo, hi in WS_RANGES for c in range(lo, hi + 1)]
    ascii_ws[[c for c in ws if c < 0x80]] = 1
    return ascii_ws, _bitmap(ws)


@functools.lru_cache(maxsize=1)
def _nfc_bitmap() -> np.ndarray:
    return _bitmap(nfc_candidates())


@functools.lru_cache(maxsize=1)
def nfc_candidates() -> list[int]:
    """Code points that can make a string non-NFC. A string with none of them is NFC: every other
    character is NFC by itself, has combining class 0 and cannot be the second half of a canonical
    composition (so nothing composes with the character before it).

    Finding them asks ``unicodedata`` about every code point (~1 s), so the list is kept in
    ``~/.cache/fastdistill`` (``FASTDISTILL_CACHE``) per Unicode version; every process that
    canonicalises (``num_proc`` workers, Ray workers) reads it from there.
    """
    cache = Path(os.environ.get("FASTDISTILL_CACHE") or Path.home() / ".cache" / "fastdistill")
    path = cache / f"nfc_candidates_unicode_{unicodedata.unidata_version}.npy"
    try:
        return np.load(path).tolist()
    except (OSError, ValueError):
        pass
    chars = _find_nfc_candidates()
    try:  # a cache that cannot be written only costs the next process the same second
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.npy")
        np.save(tmp, np.array(chars, dtype=np.int32))
        os.replace(tmp, path)
    except OSError:
        pass
    return chars


def _find_nfc_candidates() -> list[int]:
    chars = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul V/T jamo compose with L/LV
    for c in range(sys.maxunicode + 1):
        if 0xD800 <= c < 0xE000:
            continue
        ch = chr(c)
        if unicodedata.combining(ch) or not unicodedata.is_normalized("NFC", ch):
            chars.add(c)
        dec = unicodedata.decomposition(ch)
        if dec and not dec.startswith("<") and len(dec.split()) == 2:
            chars.add(int(dec.split()[1], 16))
    return sorted(chars)


def to_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One Arrow array (a chunked array's chunks combined; a single chunk is used as it is)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def as_string_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One ``pa.string()`` array (32-bit offsets, what the kernels read) from any Arrow string array."""
    values = to_array(values)
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = values.cast(pa.string())
    return values


def _valid_rows(flags: np.ndarray, arr: pa.Array) -> np.ndarray:
    """Indices of the flagged rows that are not null (a null slot may still point at bytes)."""
    if arr.null_count:
        flags &= np.asarray(arr.is_valid())
    return np.flatnonzero(flags)


def _buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int32 incl. the array's offset, data uint8) of a ``pa.string()`` array, zero-copy."""
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    data = arr.buffers()[2]
    data = np.zeros(0, np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)
    return offsets, data


@njit(nogil=True, cache=True, inline="always")
def _decode(data, i, end, b):
    """(code point, byte length) of the UTF-8 sequence starting with lead byte ``b`` at ``i``."""
    if b >= 0xF0:
        ln, cp = 4, np.int64(b & 0x07)
    elif b >= 0xE0:
        ln, cp = 3, np.int64(b & 0x0F)
    else:
        ln, cp = 2, np.int64(b & 0x1F)
    if ln > end - i:  # never read past the row, even on malformed data
        ln = end - i
    for k in range(1, ln):
        cp = (cp << 6) | np.int64(data[i + k] & 0x3F)
    return cp, ln


# ---- 32-byte blocks: LLVM vector IR through numba intrinsics (generic IR, no x86-only intrinsic:
# LLVM lowers it to AVX2 here, to NEON on ARM). numba's own loops do not vectorise a loop that
# compacts bytes; these three operations are what the block loop of _collapse_row needs.

_BLOCK = 32
_VEC = ir.VectorType(ir.IntType(8), _BLOCK)
_I32, _I64 = ir.IntType(32), ir.IntType(64)
# Lead bytes (>= 0xC0) of UTF-8 sequences in which no code point is whitespace or an NFC candidate
# (Latin-1 and Latin Extended letters, Greek/Cyrillic letters, CJK ideographs, Hangul syllables):
# the block loop skips them without a table lookup. _lead_table() checks this against the tables
# of the running Python and turns the shortcut off if a Unicode version ever breaks it.
COLD_LEADS = ((0xC3, 0xCB), (0xCF, 0xD1), (0xE4, 0xE9), (0xEB, 0xEE))


def _splat(x: int) -> ir.Constant:
    return ir.Constant(_VEC, [x] * _BLOCK)


def _vec_ptr(context, builder, aryty, ary, idx):
    """Pointer to the 32 bytes of the uint8 array ``ary`` at ``idx`` (no bounds check: callers do)."""
    arr = context.make_array(aryty)(context, builder, ary)
    return builder.bitcast(builder.gep(arr.data, [idx]), _VEC.as_pointer())


def _in_range(builder, v, lo: int, hi: int):
    return builder.icmp_unsigned("<=", builder.sub(v, _splat(lo)), _splat(hi - lo))


@intrinsic
def _block_masks(typingctx, data, i, coarse):
    """``data[i:i+32]`` -> uint64: bit k of the low half is set if byte k is ASCII whitespace, of the
    high half if it is a lead byte (>= 0xC0) that needs a look (outside ``COLD_LEADS`` when
    ``coarse``)."""
    sig = types.uint64(data, i, coarse)

    def codegen(context, builder, sig, args):
        v = builder.load(_vec_ptr(context, builder, sig.args[0], args[0], args[1]), align=1, typ=_VEC)
        ws = builder.or_(_in_range(builder, v, 0x09, 0x0D), _in_range(builder, v, 0x1C, 0x20))
        cold = _in_range(builder, v, *COLD_LEADS[0])
        for lo, hi in COLD_LEADS[1:]:
            cold = builder.or_(cold, _in_range(builder, v, lo, hi))
        lead = builder.icmp_unsigned(">=", v, _splat(0xC0))
        lead = builder.select(args[2], builder.and_(lead, builder.not_(cold)), lead)
        ws = builder.zext(builder.bitcast(ws, _I32), _I64)
        lead = builder.zext(builder.bitcast(lead, _I32), _I64)
        return builder.or_(ws, builder.shl(lead, ir.Constant(_I64, 32)))
    return sig, codegen


@intrinsic
def _store_spaced(typingctx, data, i, out, o, ws):
    """``out[o:o+32] = data[i:i+32]`` with the bytes whose bit is set in ``ws`` written as spaces."""
    sig = types.void(data, i, out, o, ws)

    def codegen(context, builder, sig, args):
        v = builder.load(_vec_ptr(context, builder, sig.args[0], args[0], args[1]), align=1, typ=_VEC)
        mask = builder.bitcast(builder.trunc(args[4], _I32), ir.VectorType(ir.IntType(1), _BLOCK))
        builder.store(builder.select(mask, _splat(32), v), _vec_ptr(context, builder, sig.args[2], args[2], args[3]),
                      align=1)
        return context.get_dummy_value()
    return sig, codegen


def _zero_bits(name: str):
    """An intrinsic counting the trailing (``"cttz"``) or leading (``"ctlz"``) zero bits of a
    non-zero uint64: one instruction (zero is undefined, callers never pass it)."""

    def typer(typingctx, x):
        def codegen(context, builder, sig, args):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64, ir.IntType(1)]),
                                                f"llvm.{name}.i64")
            return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])
        return types.uint64(x), codegen
    return intrinsic(typer)


_cttz = _zero_bits("cttz")
_ctlz = _zero_bits("ctlz")


@njit(nogil=True, cache=True, inline="always")
def _look_bits(data, i, end, lead, lead_tbl):
    """Bits of the lead bytes in ``lead`` (block at ``i``) whose characters may be whitespace or NFC
    candidates (:func:`_lead_table`, or within 3 bytes of ``end``, where :func:`_decode` clamps).
    Branch-free per lead byte; the rare hits are decoded by the caller."""
    one = np.uint64(1)
    look = np.uint64(0)
    while lead:
        p = _cttz(lead)
        lead &= lead - one
        j = i + p
        hit = lead_tbl[(np.uint64(data[j]) << np.uint64(8)) | np.uint64(data[j + one])]
        look |= (np.uint64(hit) | np.uint64(j + np.uint64(4) > end)) << p
    return look


@functools.lru_cache(maxsize=1)
def _lead_table() -> tuple[np.ndarray, bool]:
    """(table, coarse): ``table[b0 << 8 | b1]`` is 1 when a UTF-8 sequence starting with the bytes
    b0 b1 may be whitespace or an NFC candidate, as :func:`_decode` reads it (continuation bits
    masked, so malformed bytes map where the scalar loop maps them; 4-byte leads past U+10FFFF
    always look); ``coarse`` says that no lead byte of ``COLD_LEADS`` has a 1."""
    _, ws_bm = _ws_tables()
    bits = np.unpackbits(ws_bm | _nfc_bitmap(), bitorder="little").astype(bool)
    hot = np.ones(1 << 21, dtype=bool)
    hot[:len(bits)] = bits
    b0, b1 = np.arange(256)[:, None], np.arange(256)[None, :]
    two = hot[((b0 & 0x1F) << 6) | (b1 & 0x3F)]
    three = hot[:1 << 16].reshape(1024, 64).any(1)[((b0 & 0x0F) << 6) | (b1 & 0x3F)]
    four = hot.reshape(512, 4096).any(1)[((b0 & 0x07) << 6) | (b1 & 0x3F)]
    table = np.where(b0 >= 0xF0, four, np.where(b0 >= 0xE0, three, two))
    table[:0xC0] = False
    coarse = not any(table[lo:hi + 1].any() for lo, hi in COLD_LEADS)
    return table.astype(np.uint8).ravel(), coarse


@njit(nogil=True, cache=True)
def _collapse_row(data, start, end, ascii_ws, ws_bm, nfc_bm, lead_tbl, coarse, out, o):
    """Collapse the bytes ``data[start:end]`` into ``out[o:]``; returns (end of output, NFC flag).
    ``out`` needs 32 bytes of room past the output (the block stores are 32 bytes wide).

    In 32-byte blocks: one vector compare gives the whitespace bits ``w`` (multi-byte whitespace
    characters, found through :func:`_lead_table` and decoded, add their bits) and the bytes to drop,
    ``w & (w << 1 | prev)`` -- every byte of a whitespace run after its first. Each run of kept bytes
    is one 32-byte store (whitespace written as spaces) at the output position, which then advances
    by the run's length; code has about one such run per line. The scalar loop takes the bytes the
    blocks do not reach (a row's tail, the end of the buffer): every byte is written; the output
    position advances unless the byte continues a whitespace run (``w & prev``). Unsigned 64-bit
    positions: numba then emits no negative-index wrap-around (~1.5x faster).
    """
    one = np.uint64(1)
    lo32 = np.uint64(0xFFFFFFFF)
    block = np.uint64(_BLOCK)
    row_start = o
    prev = one  # a run at the start of the row leaves nothing
    flag = False
    n = np.uint64(data.shape[0])
    # a block store reads up to 63 bytes past its start: blocks stop 32 bytes before the buffer ends
    block_end = min(end, n - block) if n >= block else np.uint64(0)
    i = start
    carry = np.uint64(0)  # bits of a multi-byte whitespace character that runs into the next block
    while i + block <= block_end:
        m = _block_masks(data, i, coarse)
        w = (m & lo32) | carry
        look = _look_bits(data, i, end, m >> np.uint64(32), lead_tbl)
        while look:
            p = _cttz(look)
            look &= look - one
            cp, ln = _decode(data, i + p, end, data[i + p])
            if (ws_bm[cp >> 3] >> (cp & 7)) & 1:
                w |= ((one << np.uint64(ln)) - one) << p
            elif (nfc_bm[cp >> 3] >> (cp & 7)) & 1:
                flag = True
        carry = w >> np.uint64(32)
        w &= lo32
        drop = w & ((w << one) | prev) & lo32
        keep = ~drop & lo32
        while keep:
            s = _cttz(keep)
            run = _cttz(~(keep >> s))
            _store_spaced(data, i + s, out, o, w >> s)
            o += run
            keep &= ~((one << (s + run)) - one)
        prev = (w >> np.uint64(31)) & one
        i += block
    skip = 0
    while carry:
        skip += 1
        carry >>= one
    while i < end:
        b = data[i]
        w = np.uint64(ascii_ws[b])
        if b >= 0x80:
            if b >= 0xC0:
                cp, ln = _decode(data, i, end, b)
                if (ws_bm[cp >> 3] >> (cp & 7)) & 1:
                    w = one
                    skip = ln - 1
                elif (nfc_bm[cp >> 3] >> (cp & 7)) & 1:
                    flag = True
            elif skip > 0:
                w = one
                skip -= 1
        out[o] = 32 if w else b
        o += one - (w & prev)
        prev = w
        i += one
    if prev and o > row_start:  # a run at the end of the row: drop its space
        o -= one
    return o, flag


@njit(nogil=True, cache=True)
def _collapse_kernel(data, offsets, ascii_ws, ws_bm, nfc_bm, lead_tbl, coarse, out, out_offsets, nfc_flags):
    o = np.uint64(0)
    for r in range(offsets.shape[0] - 1):
        out_offsets[r] = o
        o, nfc_flags[r] = _collapse_row(data, np.uint64(offsets[r]), np.uint64(offsets[r + 1]), ascii_ws, ws_bm,
                                        nfc_bm, lead_tbl, coarse, out, o)
    out_offsets[offsets.shape[0] - 1] = o


@njit(nogil=True, cache=True)
def _nfc_spans_kernel(data, offsets, rows, ascii_ws, ws_bm, nfc_bm, lead_tbl, coarse, spans):
    """The spans (absolute byte ranges) of ``rows`` that NFC can change; returns how many.

    A span runs from the whitespace character before a word holding an NFC candidate to the
    whitespace character after it (or the row's ends); touching spans are merged. Whitespace
    characters are starters that compose with nothing, so NFC of a row is NFC of each span with the
    bytes between spans unchanged. ``spans`` (``(m, 3)``: row position in ``rows``, start, stop) is
    only written while it has room; call again with the returned size.

    A 32-byte block whose lead bytes need no look (:func:`_look_bits`) holds no candidate and no
    multi-byte whitespace: it only ends an open span at its first ASCII whitespace byte and moves
    ``word_ws`` to its last. Other blocks and a row's tail go byte by byte.
    """
    block = np.uint64(_BLOCK)
    n = np.uint64(data.shape[0])
    m = 0
    for k in range(rows.shape[0]):
        start, end = np.uint64(offsets[rows[k]]), np.uint64(offsets[rows[k] + 1])
        block_end = min(end, n - block) if n >= block else np.uint64(0)
        i = start
        word_ws = start  # the whitespace character before the current word
        in_span = False
        while i < end:
            stop = end
            if i + block <= block_end:
                mask = _block_masks(data, i, coarse)
                if _look_bits(data, i, end, mask >> np.uint64(32), lead_tbl) == 0:
                    w = mask & np.uint64(0xFFFFFFFF)
                    if w:
                        if in_span:
                            if m <= spans.shape[0]:
                                spans[m - 1, 2] = i + _cttz(w)
                            in_span = False
                        word_ws = i + np.uint64(63) - _ctlz(w)
                    i += block
                    continue
                stop = i + block
            while i < stop:
                b = data[i]
                ln = 1
                is_ws = ascii_ws[b] == 1
                cand = False
                if b >= 0xC0:
                    cp, ln = _decode(data, i, end, b)
                    is_ws = ((ws_bm[cp >> 3] >> (cp & 7)) & 1) == 1
                    cand = not is_ws and ((nfc_bm[cp >> 3] >> (cp & 7)) & 1) == 1
                if is_ws:
                    if in_span:  # the span ends before this whitespace character
                        if m <= spans.shape[0]:
                            spans[m - 1, 2] = i
                        in_span = False
                    word_ws = i
                elif cand and not in_span:
                    if m > 0 and m <= spans.shape[0] and spans[m - 1, 0] == k and spans[m - 1, 2] == word_ws:
                        in_span = True  # touches the previous span: extend it
                    else:
                        if m < spans.shape[0]:
                            spans[m, 0] = k
                            spans[m, 1] = word_ws
                            spans[m, 2] = end
                        m += 1
                        in_span = True
                i += np.uint64(ln)
        if in_span and m <= spans.shape[0]:
            spans[m - 1, 2] = end
    return m


@njit(nogil=True, cache=True)
def _gather_spans(data, spans, out, out_offsets):
    o = 0
    for s in range(spans.shape[0]):
        out_offsets[s] = o
        n = spans[s, 2] - spans[s, 1]
        out[o:o + n] = data[spans[s, 1]:spans[s, 2]]
        o += n
    out_offsets[spans.shape[0]] = o


@njit(nogil=True, cache=True)
def _splice_spans(data, offsets, rows, spans, new_data, new_offsets, out, out_offsets):
    """Rows ``rows`` of ``data`` with each span replaced by its new bytes, back to back."""
    o = 0
    s = 0
    for k in range(rows.shape[0]):
        out_offsets[k] = o
        i = offsets[rows[k]]
        end = offsets[rows[k] + 1]
        while s < spans.shape[0] and spans[s, 0] == k:
            n = spans[s, 1] - i
            out[o:o + n] = data[i:spans[s, 1]]
            o += n
            n = new_offsets[s + 1] - new_offsets[s]
            out[o:o + n] = new_data[new_offsets[s]:new_offsets[s + 1]]
            o += n
            i = spans[s, 2]
            s += 1
        out[o:o + end - i] = data[i:end]
        o += end - i
    out_offsets[rows.shape[0]] = o


def collapse_whitespace(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``(collapsed, nfc_rows)`` for a ``pa.string()`` array: every whitespace run becomes one space
    and none is left at either end. ``nfc_rows`` are the indices of the non-null rows holding a
    character other than whitespace that NFC may change: NFC comes first in the canonical form, so
    those rows must go through :func:`nfc_rows_text` and be collapsed again (the whitespace
    characters NFC changes, U+2000/U+2001, become whitespace and are collapsed either way). Nulls
    stay null."""
    n = len(arr)
    offsets, data = _buffers(arr)
    ascii_ws, ws_bm = _ws_tables()
    out = np.empty(int(offsets[-1] - offsets[0]) + _BLOCK, dtype=np.uint8)
    out_offsets = np.empty(n + 1, dtype=np.int32)
    flags = np.empty(n, dtype=np.bool_)
    _collapse_kernel(data, offsets, ascii_ws, ws_bm, _nfc_bitmap(), *_lead_table(), out, out_offsets, flags)
    validity = None
    if arr.null_count:
        validity = pa.py_buffer(np.packbits(np.asarray(arr.is_valid()), bitorder="little"))
    result = pa.StringArray.from_buffers(n, pa.py_buffer(out_offsets), pa.py_buffer(out[:out_offsets[-1]]),
                                         validity, arr.null_count)
    return result, _valid_rows(flags, arr)


def nfc_rows_text(arr: pa.Array, rows: np.ndarray) -> pa.Array:
    """NFC of ``arr[rows]`` (non-null rows) up to whitespace, normalising only the words NFC can change.

    Whitespace characters are left as they are (NFC maps U+2000/U+2001 to U+2002/U+2003): this is
    the input of the collapse rule, which turns every whitespace run into one space either way.

    Arrow's utf8proc NFC kernel runs at ~55 MB/s; a code row with a few decomposed accents needs it
    on the words around them, not on its few kB. The spans come from :func:`_nfc_spans_kernel`; the
    normalised spans are spliced back between the unchanged bytes in one more pass.
    """
    offsets, data = _buffers(arr)
    ascii_ws, ws_bm = _ws_tables()
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    spans = np.empty((32 * len(rows), 3), dtype=np.int64)
    m = _nfc_spans_kernel(data, offsets, rows, ascii_ws, ws_bm, _nfc_bitmap(), *_lead_table(), spans)
    if m > len(spans):  # (merging may need fewer once every span fits)
        spans = np.empty((m, 3), dtype=np.int64)
        m = _nfc_spans_kernel(data, offsets, rows, ascii_ws, ws_bm, _nfc_bitmap(), *_lead_table(), spans)
    spans = spans[:m]
    span_offsets = np.empty(m + 1, dtype=np.int32)
    span_bytes = np.empty(max(int((spans[:, 2] - spans[:, 1]).sum()), 1), dtype=np.uint8)
    _gather_spans(data, spans, span_bytes, span_offsets)
    normed = pc.utf8_normalize(pa.StringArray.from_buffers(m, pa.py_buffer(span_offsets), pa.py_buffer(span_bytes)),
                               "NFC")
    new_offsets, new_data = _buffers(normed)
    total = int((offsets[rows + 1] - offsets[rows]).sum() - (span_offsets[-1] - span_offsets[0])
                + (new_offsets[-1] - new_offsets[0]))
    out = np.empty(max(total, 1), dtype=np.uint8)
    out_offsets = np.empty(len(rows) + 1, dtype=np.int32)
    _splice_spans(data, offsets, rows, spans, new_data, new_offsets, out, out_offsets)
    return pa.StringArray.from_buffers(len(rows), pa.py_buffer(out_offsets), pa.py_buffer(out[:total]))


@functools.lru_cache(maxsize=1)
def _sha256_kernel():
    """The collapse + SHA-256 kernel, or None where OpenSSL's ``SHA256`` cannot be called.

    ``hashlib`` holds the GIL for inputs under 2 kB, so the hashing of several batches on several
    threads ran one at a time. This kernel calls the SHA-256 of the OpenSSL library that
    ``hashlib`` itself uses (libcrypto, Linux only) from compiled code with the GIL released,
    on each canonical row while it is still in a small scratch buffer. A known digest is checked
    at load; anything unexpected falls back to ``hashlib``. Not cached on disk (it holds the
    address of a C function), so it compiles once per process (~1 s).
    """
    import ctypes
    import ctypes.util
    import hashlib

    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("crypto") or "libcrypto.so.3")
        init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
    except (OSError, AttributeError):
        return None
    # SHA256_Init/Update/Final (deprecated in OpenSSL 3, still exported) skip the per-call algorithm
    # fetch of the one-shot SHA256(): 0.11 s instead of 0.15 s per 100k rows of 1.7 kB.
    init.argtypes, init.restype = [ctypes.c_void_p], ctypes.c_int
    update.argtypes, update.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int
    final.argtypes, final.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int

    @njit(nogil=True)
    def kernel(data, offsets, ascii_ws, ws_bm, nfc_bm, lead_tbl, coarse, scratch, digests, nfc_flags):
        ctx = np.empty(256, dtype=np.uint8)  # SHA256_CTX is 112 bytes
        c = ctx.ctypes.data
        base = scratch.ctypes.data
        out = digests.ctypes.data
        for r in range(offsets.shape[0] - 1):
            o, nfc_flags[r] = _collapse_row(data, np.uint64(offsets[r]), np.uint64(offsets[r + 1]), ascii_ws, ws_bm,
                                            nfc_bm, lead_tbl, coarse, scratch, np.uint64(0))
            init(c)
            update(c, base, o)
            final(out + 32 * r, c)

    probe = np.frombuffer(b"  a\tb\n", dtype=np.uint8).copy()
    got = np.zeros((1, 32), dtype=np.uint8)
    try:
        kernel(probe, np.array([0, len(probe)], np.int32), *_ws_tables(), _nfc_bitmap(), *_lead_table(),
               np.zeros(16 + _BLOCK, np.uint8), got, np.zeros(1, np.bool_))
    except Exception:  # noqa: BLE001 - any failure to compile or call means: use hashlib
        return None
    return kernel if got.tobytes() == hashlib.sha256(b"a b").digest() else None


def collapsed_sha256(arr: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """``(digests, nfc_rows)``: SHA-256 (``(n, 32)`` uint8) of every row of a ``pa.string()`` array
    after the collapse rule, computed without materialising the collapsed text, and the rows NFC may
    change (as in :func:`collapse_whitespace`; their digests must be recomputed). None where the
    OpenSSL kernel is unavailable. Digests of null rows are meaningless."""
    kernel = _sha256_kernel()
    if kernel is None:
        return None
    n = len(arr)
    offsets, data = _buffers(arr)
    scratch = np.empty((int(np.diff(offsets).max()) if n else 0) + _BLOCK, dtype=np.uint8)
    digests = np.empty((n, 32), dtype=np.uint8)
    flags = np.empty(n, dtype=np.bool_)
    kernel(data, offsets, *_ws_tables(), _nfc_bitmap(), *_lead_table(), scratch, digests, flags)
    return digests, _valid_rows(flags, arr)


# 64-bit mixing constants (golden ratio, splitmix64), FNV-1a 64 for the bytes of a word
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@njit(nogil=True, cache=True, inline="always")
def _mix(x, s1, s2, s3):
    """64-bit finaliser: xor-shift by ``s1``, multiply, xor-shift ``s2``, multiply, xor-shift ``s3``
    (splitmix64 with shifts 30, 27, 31)."""
    x ^= x >> np.uint64(s1)
    x *= _M2
    x ^= x >> np.uint64(s2)
    x *= _M3
    x ^= x >> np.uint64(s3)
    return x


@njit(nogil=True, cache=True, inline="always")
def _row_words(data, start, end, ascii_ws, ws_bm, words):
    """Hashes of the words of ``data[start:end]`` into ``words[1:]``; returns how many.

    Same byte loop as :func:`_collapse_row`: ``w`` is 1 on every byte of a whitespace character (the
    classification is written out in both loops: a shared helper returning a tuple made them 10x
    slower). A word hash is FNV-1a over its bytes, then a splitmix64 finaliser. Branch-free on ASCII
    bytes: the running hash is stored at every byte into the slot of the current word (``words[0]``
    takes the bytes before the first word).
    """
    one = np.uint64(1)
    nw = np.uint64(0)
    prev = one
    skip = 0
    h = _FNV_OFFSET
    for i in range(start, end):
        b = data[i]
        w = np.uint64(ascii_ws[b])
        if b >= 0xC0:
            cp, ln = _decode(data, i, end, b)
            if (ws_bm[cp >> 3] >> (cp & 7)) & 1:
                w = one
                skip = ln - 1
        elif b >= 0x80 and skip > 0:
            w = one
            skip -= 1
        starts_word = (one - w) & prev
        nw += starts_word
        h = _FNV_OFFSET if starts_word else h
        h = h if w else (h ^ np.uint64(b)) * _FNV_PRIME
        words[nw] = h
        prev = w
    for k in range(1, nw + 1):
        words[k] = _mix(words[k], 30, 27, 31)
    return nw


@njit(nogil=True, cache=True, inline="always")
def _ngram(words, s, span):
    """Hash of the ``span`` words from ``words[s]`` (multiply-add, then :func:`_mix`)."""
    g = words[s]
    for k in range(1, span):
        g = g * _M1 + words[s + k]
    return _mix(g, 31, 29, 32)


@njit(nogil=True, cache=True)
def _ngram_kernel(data, offsets, ascii_ws, ws_bm, ngram, words, out, out_offsets):
    """The n-gram hashes of every row, flat: row ``r``'s are ``out[out_offsets[r]:out_offsets[r + 1]]``."""
    o = 0
    for r in range(offsets.shape[0] - 1):
        out_offsets[r] = o
        nw = np.int64(_row_words(data, np.uint64(offsets[r]), np.uint64(offsets[r + 1]), ascii_ws, ws_bm, words))
        if nw == 0:
            continue
        span = min(ngram, nw)  # a row shorter than ngram words: one hash of all its words
        for s in range(1, nw - span + 2):
            out[o] = _ngram(words, s, span)
            o += 1
    out_offsets[offsets.shape[0] - 1] = o


@njit(nogil=True, cache=True, inline="always")
def _permuted_min(row, x, mult, add):
    """``row[p] = min(row[p], mult[p] * x32 + add[p] mod 2**32)`` for every permutation ``p`` of the
    token hash ``x`` folded to 32 bits (uint32 arithmetic: the loop vectorises)."""
    x32 = np.uint32((x ^ (x >> np.uint64(32))) & np.uint64(0xFFFFFFFF))
    for p in range(mult.shape[0]):
        row[p] = min(row[p], np.uint32(x32 * mult[p] + add[p]))


@njit(nogil=True, cache=True, inline="always")
def _fold_bands(row, keys, n_bands):
    """Each band of the signature ``row`` folded into one 64-bit key (never 0)."""
    rows_per_band = row.shape[0] // n_bands
    for b in range(n_bands):
        key = np.uint64(row[b * rows_per_band])
        for k in range(1, rows_per_band):
            key = key * _M1 + np.uint64(row[b * rows_per_band + k])
        key ^= key >> np.uint64(31)
        key *= _M2
        key ^= key >> np.uint64(29)
        keys[b] = key | np.uint64(1)


@njit(nogil=True, cache=True)
def _band_keys_kernel(data, offsets, ascii_ws, ws_bm, ngram, words, mult, add, keys):
    """Band keys of a small MinHash sketch of every row, in the pass that hashes its n-grams (no
    array of n-gram hashes is written); rows with no word keep key 0."""
    sketch = np.empty(mult.shape[0], dtype=np.uint32)
    for r in range(offsets.shape[0] - 1):
        nw = np.int64(_row_words(data, np.uint64(offsets[r]), np.uint64(offsets[r + 1]), ascii_ws, ws_bm, words))
        if nw == 0:
            continue
        sketch[:] = np.uint32(0xFFFFFFFF)
        span = min(ngram, nw)
        for s in range(1, nw - span + 2):
            _permuted_min(sketch, _ngram(words, s, span), mult, add)
        _fold_bands(sketch, keys[r], keys.shape[1])


@njit(nogil=True, cache=True)
def _signature_kernel(hashes, offsets, mult, add, out):
    for r in range(offsets.shape[0] - 1):
        out[r, :] = np.uint32(0xFFFFFFFF)
        for t in range(offsets[r], offsets[r + 1]):
            _permuted_min(out[r], hashes[t], mult, add)


@njit(nogil=True, cache=True)
def _signature_keys_kernel(sig, keys):
    for r in range(sig.shape[0]):
        _fold_bands(sig[r], keys[r], keys.shape[1])


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mult = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    add = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
    return mult, add


def minhash_signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """``(rows, num_perm)`` uint32 MinHash signatures of the flat token hashes of each row.

    Permutation ``p`` maps a token's 64-bit hash ``x`` (folded to 32 bits) to ``a_p * x + b_p`` mod
    2**32 (``a_p`` odd, both drawn from ``seed``), and the signature keeps its minimum over the
    row's tokens; the fraction of equal values of two signatures estimates the Jaccard similarity
    of the token sets (unbiased; a test checks it against exact Jaccard). Written here rather than
    taken from rensa: rensa computes the same kind of matrix as fast, but hands it back only as
    Python lists (``to_rows``), which cost four times the computation.
    """
    mult, add = _permutations(num_perm, seed)
    out = np.empty((len(offsets) - 1, num_perm), dtype=np.uint32)
    _signature_kernel(np.ascontiguousarray(hashes, dtype=np.uint64), np.ascontiguousarray(offsets, dtype=np.int64),
                      mult, add, out)
    return out


def signature_band_keys(sig: np.ndarray, num_bands: int) -> np.ndarray:
    """``(rows, num_bands)`` uint64: each LSH band of the signatures folded into one 64-bit key."""
    keys = np.zeros((len(sig), num_bands), dtype=np.uint64)
    _signature_keys_kernel(np.ascontiguousarray(sig, dtype=np.uint32), keys)
    return keys


def _prepared(arr: pa.Array):
    if arr.null_count:  # a null slot may still point at bytes: read it as ""
        arr = pc.fill_null(arr, "")
    offsets, data = _buffers(arr)
    longest = int(np.diff(offsets).max()) if len(arr) else 0
    words = np.empty(longest // 2 + 2, dtype=np.uint64)  # a word takes a byte and a separator
    return offsets, data, words


def word_ngram_hashes(arr: pa.Array, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """``(hashes, offsets)``: the 64-bit hashes of the word ``ngram``-grams of every row, flat
    (uint64), and the row offsets into them (int64, ``len(arr) + 1``).

    Words are the maximal runs of non-whitespace characters (``str.split()``); a row with fewer than
    ``ngram`` words gives one hash of all its words, a row with none (empty, blank or null) no hash:
    the same sets as :func:`fastdistill.curation.dedup.shingles`, one 64-bit value per shingle.
    Depends only on the row, so any split into batches or processes gives the same hashes.
    """
    offsets, data, words = _prepared(arr)
    ascii_ws, ws_bm = _ws_tables()
    # at most one n-gram per word: an upper bound; only the pages written are ever committed
    out = np.empty(max(int(offsets[-1] - offsets[0]) // 2 + len(arr), 1), dtype=np.uint64)
    out_offsets = np.empty(len(arr) + 1, dtype=np.int64)
    _ngram_kernel(data, offsets, ascii_ws, ws_bm, ngram, words, out, out_offsets)
    return out[:out_offsets[-1]], out_offsets


def minhash_sketch_keys(arr: pa.Array, ngram: int, seed: int, n_functions: int, n_bands: int) -> np.ndarray:
    """``(len(arr), n_bands)`` uint64 band keys of a small MinHash sketch (``n_functions``
    permutations, as in :func:`minhash_signatures`) of every row's word n-grams, computed without an
    array of n-gram hashes (:func:`_band_keys_kernel`); rows with no word get key 0."""
    offsets, data, words = _prepared(arr)
    ascii_ws, ws_bm = _ws_tables()
    mult, add = _permutations(n_functions, seed)
    keys = np.zeros((len(arr), n_bands), dtype=np.uint64)
    _band_keys_kernel(data, offsets, ascii_ws, ws_bm, ngram, words, mult, add, keys)
    return keys


@njit(nogil=True, cache=True)
def _ordered_lsh_pass(sig, groups, n_groups, nonempty, threshold, dup, match):
    """The ordered insert-if-no-match MinHash pass over the rows of ``sig`` (uint32 signatures).

    ``groups[i, b]`` numbers the key of row ``i`` in band ``b`` (equal keys, equal numbers; numbers
    of different bands never collide). The kept rows of a band bucket form a linked list
    (``head``/``link``); a row's candidates are the kept rows of its buckets, checked in increasing
    order, and the first whose fraction of equal signature values is >= ``threshold`` is its match.
    """
    m, n_perm = sig.shape
    n_bands = groups.shape[1]
    head = np.full(n_groups, -1, dtype=np.int64)
    link = np.full((m, n_bands), -1, dtype=np.int64)
    stamp = np.full(m, -1, dtype=np.int64)
    cand = np.empty(m, dtype=np.int64)
    for i in range(m):
        if not nonempty[i]:
            continue
        nc = 0
        for b in range(n_bands):
            j = head[groups[i, b]]
            while j >= 0:
                if stamp[j] != i:
                    stamp[j] = i
                    cand[nc] = j
                    nc += 1
                j = link[j, b]
        found = -1
        if nc:
            for j in np.sort(cand[:nc]):
                equal = 0
                for p in range(n_perm):
                    equal += sig[i, p] == sig[j, p]
                if equal / n_perm >= threshold:
                    found = j
                    break
        if found < 0:
            for b in range(n_bands):
                g = groups[i, b]
                link[i, b] = head[g]
                head[g] = i
        else:
            dup[i] = True
            match[i] = found


def ordered_lsh_pass(sig: np.ndarray, band_keys: np.ndarray, nonempty: np.ndarray, threshold: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(is_duplicate, match)`` of the ordered MinHash pass (see :func:`_ordered_lsh_pass`);
    ``match[i]`` is the index of the kept row that row ``i`` duplicates (``i`` when kept)."""
    m, n_bands = band_keys.shape
    groups = np.empty((m, n_bands), dtype=np.int64)
    n_groups = 0
    for b in range(n_bands):
        _, inverse = np.unique(band_keys[:, b], return_inverse=True)
        groups[:, b] = inverse.reshape(-1) + n_groups
        n_groups += int(inverse.max()) + 1 if m else 0
    dup = np.zeros(m, dtype=np.bool_)
    match = np.arange(m, dtype=np.int64)
    _ordered_lsh_pass(np.ascontiguousarray(sig, dtype=np.uint32), groups, n_groups,
                      np.ascontiguousarray(nonempty, dtype=np.bool_), float(threshold), dup, match)
    return dup, match

"""Datasets-native curation: canonicalize, hash, deduplicate, filter, execute, score, report.

Every step takes and returns a ``datasets.Dataset`` (rows keep their order; only the documented
columns are added, rows only leave in steps that drop and say how many) and has a batched row
function for custom ``ds.map(batched=True)`` pipelines (``*_rows``). This package never imports
torch; ``tests_exec_eval`` imports ``fastdistill.rewards`` only when called.
"""

from fastdistill.curation.canonical import (
    canonical_row,
    canonical_text,
    canonicalize,
    canonicalize_arrow,
    canonicalize_rows,
    compute_hash,
    hash_arrow,
    hash_rows,
    normalize_sql,
)
from fastdistill.curation.dedup import (
    MINHASH_DEFAULTS,
    deduplicate,
    first_occurrence_arrow,
    first_occurrence_python,
    minhash_duplicates,
    shingles,
)
from fastdistill.curation.filters import (
    clean_sql_output,
    clean_sql_output_rows,
    extract_sql,
    rule_filter,
    rule_filter_rows,
)
from fastdistill.curation.reports import (
    GateResult,
    quality_gate,
    quality_report,
    timing_report,
    write_manifest,
)
from fastdistill.curation.scoring import keep_by_score, score_from_exec_eval
from fastdistill.curation.sql_eval import ERROR_CLASSES, sqlite_exec_eval, sqlite_exec_eval_rows
from fastdistill.curation.tests_eval import tests_exec_eval, tests_exec_eval_rows

__all__ = [
    "canonicalize", "compute_hash", "deduplicate", "rule_filter", "sqlite_exec_eval", "score_from_exec_eval",
    "keep_by_score", "clean_sql_output", "write_manifest", "quality_report", "timing_report", "quality_gate",
    "tests_exec_eval",
    # batched row functions and helpers
    "canonical_row", "canonical_text", "canonicalize_arrow", "canonicalize_rows", "hash_arrow", "hash_rows",
    "normalize_sql", "MINHASH_DEFAULTS", "first_occurrence_arrow", "first_occurrence_python", "minhash_duplicates",
    "shingles", "clean_sql_output_rows", "extract_sql", "rule_filter_rows", "GateResult", "ERROR_CLASSES",
    "sqlite_exec_eval_rows", "tests_exec_eval_rows",
]

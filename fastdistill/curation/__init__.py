"""Datasets-native curation: canonicalize, hash, deduplicate, filter, execute, score, report.

Every step takes and returns a ``datasets.Dataset`` (rows keep their order; only the documented
columns are added) and has a batched row function for custom ``ds.map(batched=True)`` pipelines.
This package never imports torch.
"""

from fastdistill.curation.canonical import (
    canonicalize,
    canonicalize_arrow,
    canonicalize_rows,
    compute_hash,
    hash_arrow,
    hash_rows,
)
from fastdistill.curation.dedup import deduplicate, first_occurrence_arrow, first_occurrence_python

__all__ = [
    "canonicalize",
    "canonicalize_arrow",
    "canonicalize_rows",
    "compute_hash",
    "hash_arrow",
    "hash_rows",
    "deduplicate",
    "first_occurrence_arrow",
    "first_occurrence_python",
]

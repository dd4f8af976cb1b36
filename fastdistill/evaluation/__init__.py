"""Evaluate students: batch inference to JSONL, mutation kill rate, pass rate, test speed and stability.

Generation (:func:`generate`) is separate from scoring (:func:`score_mutation`, :func:`score_speed`),
so one set of completions can be scored both ways; :func:`evaluate_mutation` and
:func:`evaluate_speed` do both steps for a model. Headline numbers are always means of the
per-example ``rows`` returned next to them. Scoring runs the tests in the sandbox of
:mod:`fastdistill.rewards`; torch is imported only to generate.
"""

from fastdistill.evaluation.generation import (
    GenerationSettings,
    generate,
    load_model,
    prepare_rows,
    read_jsonl,
    write_jsonl,
)
from fastdistill.evaluation.metrics import evaluate_mutation, evaluate_speed, mean_or_none, score_mutation, score_speed

__all__ = [
    "GenerationSettings", "generate", "load_model", "prepare_rows", "read_jsonl", "write_jsonl",
    "evaluate_mutation", "evaluate_speed", "score_mutation", "score_speed", "mean_or_none",
]

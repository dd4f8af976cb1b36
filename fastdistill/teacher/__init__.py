"""Teacher annotation: completions and log-probs from a local teacher or an OpenAI-compatible server.

Offline distillation stores the teacher's outputs with the data so the student trains without the
teacher in memory (the ``teacher_logprobs`` / top-k path of :class:`fastdistill.GKDTrainer`)::

    from fastdistill.teacher import annotate, OpenAIServerTeacher

    ds = annotate(ds, "path/to/teacher", completion_column="completion", top_k=8, cache_dir="cache/")
    ds = annotate(ds, OpenAIServerTeacher("http://localhost:8000/v1", "teacher"), tokenizer=tok,
                  num_samples=4, temperature=0.8, cache_dir="cache/")

The command line is ``fastdistill annotate --config annotate.yaml`` (see :mod:`fastdistill.teacher.cli`).
"""

from fastdistill.teacher.annotate import (
    AnnotationCache,
    AnnotationError,
    AnnotationReport,
    TokenizerMismatchError,
    annotate,
)
from fastdistill.teacher.local import LocalTeacher
from fastdistill.teacher.served import ServedTeacher, TeacherFailureError, is_teacher_url
from fastdistill.teacher.server import AlignmentError, OpenAIServerTeacher, TeacherServerError

__all__ = [
    "annotate",
    "LocalTeacher",
    "OpenAIServerTeacher",
    "ServedTeacher",
    "TeacherServerError",
    "TeacherFailureError",
    "is_teacher_url",
    "AnnotationReport",
    "AnnotationCache",
    "AnnotationError",
    "AlignmentError",
    "TokenizerMismatchError",
]

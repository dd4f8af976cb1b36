"""Dataset loading, prompt templates and collators.

``load_supervised_dataset`` and the prompt templates need only ``datasets``; the collator
(``fastdistill.data.collators``) needs torch and is imported from there explicitly.
"""

from fastdistill.data.loading import TEACHER_COLUMNS, load_supervised_dataset
from fastdistill.data.templates import (
    SYSTEM_PROMPT,
    TEMPLATES,
    diagnose_failure_prompt,
    fix_tests_prompt,
    generate_tests_prompt,
)

__all__ = [
    "load_supervised_dataset",
    "TEACHER_COLUMNS",
    "SYSTEM_PROMPT",
    "TEMPLATES",
    "generate_tests_prompt",
    "fix_tests_prompt",
    "diagnose_failure_prompt",
]

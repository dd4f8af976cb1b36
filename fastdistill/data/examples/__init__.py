"""Bundled examples: small Python functions/classes, each with a reference pytest file.

Every example lives in its own folder: ``solution.py`` (the code under test) and
``test_solution.py`` (reference tests importing it with ``from solution import ...``). They are
used by the tests, the benchmarks and the demo. Loading needs only the standard library
(``datasets`` only for :func:`examples_dataset`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_ROOT = Path(__file__).resolve().parent

PROMPT_TEMPLATE = (
    "Write a pytest test file for the following Python module, importable as `{module_name}`. "
    "Import what you test with `from {module_name} import ...`, cover edge cases and make every "
    "assertion exact.\n\n```python\n{code}```\n"
)


def load_examples() -> list[dict]:
    """All bundled examples, sorted by name.

    Each dict has ``name``, ``code``, ``tests`` (reference pytest file), ``module_name``
    (``"solution"``) and ``prompt`` (a request to write tests for ``code``).
    """
    examples = []
    for folder in sorted(p for p in _ROOT.iterdir() if (p / "solution.py").is_file()):
        code = (folder / "solution.py").read_text(encoding="utf-8")
        tests = (folder / "test_solution.py").read_text(encoding="utf-8")
        examples.append({
            "name": folder.name,
            "code": code,
            "tests": tests,
            "module_name": "solution",
            "prompt": PROMPT_TEMPLATE.format(module_name="solution", code=code),
        })
    return examples


def split_examples(held_out_fraction: float = 0.25, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic (train, held_out) split: an example is held out when the hash of
    ``(seed, name)`` ranks it in the first ``held_out_fraction`` of examples.

    The split does not depend on file order or the Python hash seed, so it is stable across runs
    and machines.
    """
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError("held_out_fraction must be in [0, 1]")
    examples = load_examples()
    ranked = sorted(examples, key=lambda ex: hashlib.sha256(f"{seed}:{ex['name']}".encode()).hexdigest())
    n_held = round(len(examples) * held_out_fraction)
    held_names = {ex["name"] for ex in ranked[:n_held]}
    train = [ex for ex in examples if ex["name"] not in held_names]
    held_out = [ex for ex in examples if ex["name"] in held_names]
    return train, held_out


def examples_dataset(split: str | None = None, held_out_fraction: float = 0.25, seed: int = 0):
    """The examples as a ``datasets.Dataset``; ``split`` is ``None`` (all), ``"train"`` or ``"held_out"``."""
    from datasets import Dataset

    if split is None:
        rows = load_examples()
    elif split in ("train", "held_out"):
        train, held_out = split_examples(held_out_fraction, seed)
        rows = train if split == "train" else held_out
    else:
        raise ValueError(f"split must be None, 'train' or 'held_out', got {split!r}")
    return Dataset.from_list(rows)


__all__ = ["PROMPT_TEMPLATE", "examples_dataset", "load_examples", "split_examples"]

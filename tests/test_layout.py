"""The test tree mirrors the packages; pytest's default import mode needs every test file's name unique."""

from collections import Counter
from pathlib import Path


def test_test_file_names_are_unique_across_folders():
    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], "two test files share a name; pytest cannot import both"

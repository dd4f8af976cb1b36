import pytest
from solution import truncate

def test_truncate():
    assert truncate("hello world", 8) == "hello..."
    assert truncate("short", 10) == "short"
    assert truncate("exact", 5) == "exact"
    assert truncate("abcdef", 5, suffix="!") == "abcd!"
    assert len(truncate("x" * 50, 20)) == 20

def test_bad_limit():
    with pytest.raises(ValueError):
        truncate("abc", 2)

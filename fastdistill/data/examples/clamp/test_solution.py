import pytest
from solution import clamp

def test_clamp():
    assert clamp(5, 0, 10) == 5
    assert clamp(-3, 0, 10) == 0
    assert clamp(42, 0, 10) == 10
    assert clamp(0, 0, 10) == 0
    assert clamp(10, 0, 10) == 10
    assert clamp(3, 3, 3) == 3

def test_bad_bounds():
    with pytest.raises(ValueError):
        clamp(1, 5, 4)

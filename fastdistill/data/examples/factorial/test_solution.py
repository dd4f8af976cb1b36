import pytest
from solution import factorial

def test_values():
    assert factorial(0) == 1
    assert factorial(1) == 1
    assert factorial(2) == 2
    assert factorial(5) == 120
    assert factorial(10) == 3628800

def test_negative():
    with pytest.raises(ValueError):
        factorial(-1)

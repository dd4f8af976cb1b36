import pytest
from solution import moving_average

def test_average():
    assert moving_average([1, 2, 3, 4, 5], 2) == [1.5, 2.5, 3.5, 4.5]
    assert moving_average([2, 4, 6], 3) == [4.0]
    assert moving_average([1, 2], 3) == []
    assert moving_average([7, 9], 1) == [7.0, 9.0]

def test_bad_window():
    with pytest.raises(ValueError):
        moving_average([1], 0)

import pytest
from solution import chunk

def test_chunks():
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunk([1, 2, 3], 3) == [[1, 2, 3]]
    assert chunk([1, 2], 5) == [[1, 2]]
    assert chunk([], 2) == []
    assert chunk([1, 2, 3], 1) == [[1], [2], [3]]

def test_bad_size():
    with pytest.raises(ValueError):
        chunk([1], 0)
    with pytest.raises(ValueError):
        chunk([1], -1)

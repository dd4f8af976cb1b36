from solution import histogram

def test_histogram():
    assert histogram([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 5, 0, 10) == [2, 2, 2, 2, 2]
    assert histogram([0.5, 9.99, 10, -1], 2, 0, 10) == [1, 1]
    assert histogram([], 3, 0, 3) == [0, 0, 0]
    assert histogram([1, 1, 2], 3, 0, 3) == [0, 2, 1]

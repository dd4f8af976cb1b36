from solution import pascal

def test_rows():
    assert pascal(0) == []
    assert pascal(1) == [[1]]
    assert pascal(5) == [[1], [1, 1], [1, 2, 1], [1, 3, 3, 1], [1, 4, 6, 4, 1]]

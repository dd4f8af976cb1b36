from solution import transpose

def test_transpose():
    assert transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]
    assert transpose([[1]]) == [[1]]
    assert transpose([]) == []
    assert transpose([[1, 2]]) == [[1], [2]]

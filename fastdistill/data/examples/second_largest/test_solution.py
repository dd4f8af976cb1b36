from solution import second_largest

def test_values():
    assert second_largest([3, 1, 4, 1, 5, 9]) == 5
    assert second_largest([2, 2, 1]) == 1
    assert second_largest([-1, -2]) == -2

def test_none():
    assert second_largest([7, 7]) is None
    assert second_largest([]) is None
    assert second_largest([1]) is None

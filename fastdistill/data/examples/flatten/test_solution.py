from solution import flatten

def test_nested():
    assert flatten([1, [2, [3, (4, 5)]], 6]) == [1, 2, 3, 4, 5, 6]

def test_flat_and_empty():
    assert flatten([]) == []
    assert flatten([1, 2]) == [1, 2]
    assert flatten([[], [[]]]) == []
    assert flatten(["ab", ["c"]]) == ["ab", "c"]

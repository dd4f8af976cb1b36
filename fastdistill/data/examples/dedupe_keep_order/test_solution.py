from solution import dedupe

def test_dedupe():
    assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]
    assert dedupe(["a", "a"]) == ["a"]
    assert dedupe([]) == []
    assert dedupe([1, 2, 3]) == [1, 2, 3]

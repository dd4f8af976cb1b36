from solution import top_k

def test_top_k():
    assert top_k(["a", "b", "a", "c", "b", "a"], 2) == ["a", "b"]
    assert top_k(["x", "y", "z"], 2) == ["x", "y"]
    assert top_k(["q", "p", "p"], 1) == ["p"]
    assert top_k([], 3) == []
    assert top_k(["a"], 0) == []

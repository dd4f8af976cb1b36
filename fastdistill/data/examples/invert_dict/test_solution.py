from solution import invert

def test_invert():
    assert invert({"a": 1, "b": 2, "c": 1}) == {1: ["a", "c"], 2: ["b"]}
    assert invert({"z": 0, "y": 0, "x": 0}) == {0: ["x", "y", "z"]}
    assert invert({}) == {}

from solution import nested_get

def test_found():
    data = {"a": {"b": {"c": 3}}, "x": 0}
    assert nested_get(data, "a.b.c") == 3
    assert nested_get(data, "a.b") == {"c": 3}
    assert nested_get(data, "x") == 0

def test_missing():
    data = {"a": {"b": 1}}
    assert nested_get(data, "a.z") is None
    assert nested_get(data, "a.b.c", "d") == "d"
    assert nested_get(data, "q", 7) == 7

from solution import merge_dicts

def test_merge():
    a = {"x": 1, "n": {"p": 1, "q": 2}}
    b = {"y": 2, "n": {"q": 3, "r": 4}}
    assert merge_dicts(a, b) == {"x": 1, "y": 2, "n": {"p": 1, "q": 3, "r": 4}}
    assert a == {"x": 1, "n": {"p": 1, "q": 2}}

def test_overwrite_non_dict():
    assert merge_dicts({"k": {"a": 1}}, {"k": 5}) == {"k": 5}
    assert merge_dicts({"k": 5}, {"k": {"a": 1}}) == {"k": {"a": 1}}
    assert merge_dicts({}, {}) == {}

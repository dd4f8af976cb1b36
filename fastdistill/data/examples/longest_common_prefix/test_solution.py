from solution import longest_common_prefix

def test_prefix():
    assert longest_common_prefix(["flower", "flow", "flight"]) == "fl"
    assert longest_common_prefix(["same", "same"]) == "same"
    assert longest_common_prefix(["ab", "abc"]) == "ab"

def test_none():
    assert longest_common_prefix(["dog", "car"]) == ""
    assert longest_common_prefix([]) == ""
    assert longest_common_prefix(["solo"]) == "solo"

from solution import group_by_length

def test_groups():
    assert group_by_length(["a", "bb", "c", "ddd", "ee"]) == {1: ["a", "c"], 2: ["bb", "ee"], 3: ["ddd"]}
    assert group_by_length([]) == {}
    assert group_by_length([""]) == {0: [""]}

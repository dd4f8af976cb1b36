from solution import merge_sorted

def test_merge():
    assert merge_sorted([1, 3, 5], [2, 4, 6]) == [1, 2, 3, 4, 5, 6]
    assert merge_sorted([1, 2], [3, 4, 5]) == [1, 2, 3, 4, 5]
    assert merge_sorted([4, 5], [1]) == [1, 4, 5]
    assert merge_sorted([], [1]) == [1]
    assert merge_sorted([2], []) == [2]
    assert merge_sorted([1, 1], [1]) == [1, 1, 1]

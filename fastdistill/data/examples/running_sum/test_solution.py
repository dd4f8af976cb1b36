from solution import running_sum

def test_running_sum():
    assert running_sum([1, 2, 3, 4]) == [1, 3, 6, 10]
    assert running_sum([5, -5, 2]) == [5, 0, 2]
    assert running_sum([]) == []

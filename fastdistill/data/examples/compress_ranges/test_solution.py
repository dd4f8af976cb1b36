from solution import compress_ranges

def test_ranges():
    assert compress_ranges([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    assert compress_ranges([4]) == "4"
    assert compress_ranges([]) == ""
    assert compress_ranges([1, 3, 5]) == "1,3,5"
    assert compress_ranges([-2, -1, 0]) == "-2-0"

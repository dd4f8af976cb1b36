from solution import binary_search

def test_found():
    data = [1, 3, 5, 7, 9, 11]
    for index, value in enumerate(data):
        assert binary_search(data, value) == index

def test_missing():
    assert binary_search([1, 3, 5], 4) == -1
    assert binary_search([1, 3, 5], 0) == -1
    assert binary_search([1, 3, 5], 6) == -1
    assert binary_search([], 1) == -1

from solution import count_islands

def test_islands():
    grid = [
        [1, 1, 0, 0],
        [0, 1, 0, 1],
        [1, 0, 0, 1],
        [0, 0, 1, 1],
    ]
    assert count_islands(grid) == 3
    assert count_islands([[1, 0, 1, 0, 1]]) == 3
    assert count_islands([[1], [1], [0], [1]]) == 2
    assert count_islands([[0, 0], [0, 0]]) == 0
    assert count_islands([]) == 0
    assert count_islands([[1, 1], [1, 1]]) == 1

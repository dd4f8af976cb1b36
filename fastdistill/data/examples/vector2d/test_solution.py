from solution import Vector2D

def test_arithmetic():
    a, b = Vector2D(1, 2), Vector2D(3, 5)
    assert a + b == Vector2D(4, 7)
    assert b - a == Vector2D(2, 3)
    assert a * 3 == Vector2D(3, 6)
    assert a.dot(b) == 13

def test_length_and_eq():
    assert Vector2D(3, 4).length() == 5.0
    assert Vector2D(1, 2) != Vector2D(2, 1)
    assert Vector2D(1, 2) != (1, 2)
    assert Vector2D(0, 0).length() == 0

from solution import is_prime

def test_primes():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]

def test_squares_and_negatives():
    assert not is_prime(9)
    assert not is_prime(25)
    assert not is_prime(49)
    assert not is_prime(-7)
    assert is_prime(97)

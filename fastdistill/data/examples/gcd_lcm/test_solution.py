from solution import gcd, lcm

def test_gcd():
    assert gcd(12, 18) == 6
    assert gcd(-4, 6) == 2
    assert gcd(7, 0) == 7
    assert gcd(0, 0) == 0
    assert gcd(17, 5) == 1

def test_lcm():
    assert lcm(4, 6) == 12
    assert lcm(0, 5) == 0
    assert lcm(5, 0) == 0
    assert lcm(-3, 5) == 15
    assert lcm(7, 7) == 7

from solution import is_valid_ipv4

def test_valid():
    assert is_valid_ipv4("192.168.0.1")
    assert is_valid_ipv4("0.0.0.0")
    assert is_valid_ipv4("255.255.255.255")

def test_invalid():
    assert not is_valid_ipv4("256.1.1.1")
    assert not is_valid_ipv4("1.2.3")
    assert not is_valid_ipv4("1.2.3.4.5")
    assert not is_valid_ipv4("01.2.3.4")
    assert not is_valid_ipv4("a.b.c.d")
    assert not is_valid_ipv4("1..2.3")

import pytest
from solution import c_to_f, f_to_c

def test_conversions():
    assert c_to_f(0) == 32
    assert c_to_f(100) == 212
    assert c_to_f(-40) == -40
    assert f_to_c(212) == 100
    assert f_to_c(32) == 0
    assert f_to_c(50) == pytest.approx(10)
    assert c_to_f(37) == pytest.approx(98.6)

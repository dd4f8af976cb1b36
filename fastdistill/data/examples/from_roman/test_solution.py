import pytest
from solution import from_roman

def test_values():
    assert from_roman("III") == 3
    assert from_roman("IV") == 4
    assert from_roman("IX") == 9
    assert from_roman("LVIII") == 58
    assert from_roman("MCMXCIV") == 1994
    assert from_roman("") == 0
    assert from_roman("II") == 2

def test_invalid():
    with pytest.raises(KeyError):
        from_roman("Z")

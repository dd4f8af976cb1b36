import pytest
from solution import to_roman

def test_roman():
    cases = {1: "I", 3: "III", 4: "IV", 5: "V", 9: "IX", 14: "XIV", 40: "XL", 44: "XLIV", 50: "L",
             90: "XC", 99: "XCIX", 100: "C", 400: "CD", 500: "D", 900: "CM", 1000: "M",
             1994: "MCMXCIV", 3999: "MMMCMXCIX"}
    for number, numeral in cases.items():
        assert to_roman(number) == numeral

def test_range():
    for bad in (0, 4000, -1):
        with pytest.raises(ValueError):
            to_roman(bad)

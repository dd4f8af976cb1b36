from solution import caesar

def test_shift():
    assert caesar("abc", 1) == "bcd"
    assert caesar("xyz", 3) == "abc"

def test_case_and_symbols():
    assert caesar("Hello, World!", 5) == "Mjqqt, Btwqi!"

def test_negative_and_roundtrip():
    assert caesar("bcd", -1) == "abc"
    assert caesar(caesar("Secret", 7), -7) == "Secret"
    assert caesar("abc", 26) == "abc"

from solution import reverse_words

def test_basic():
    assert reverse_words("hello big world") == "world big hello"

def test_extra_spaces():
    assert reverse_words("  a   b ") == "b a"

def test_empty_and_single():
    assert reverse_words("") == ""
    assert reverse_words("one") == "one"

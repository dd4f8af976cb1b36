from solution import is_anagram

def test_anagrams():
    assert is_anagram("listen", "silent")
    assert is_anagram("Dormitory", "dirty room")

def test_not_anagrams():
    assert not is_anagram("abc", "abd")
    assert not is_anagram("aab", "ab")

from solution import word_frequencies

def test_counts():
    assert word_frequencies("The cat and the hat.") == {"the": 2, "cat": 1, "and": 1, "hat": 1}

def test_punctuation_and_empty():
    assert word_frequencies("a,a;b") == {"a": 2, "b": 1}
    assert word_frequencies("") == {}
    assert word_frequencies("end") == {"end": 1}

def word_frequencies(text):
    """Map each lower-cased word (letters only) to its count."""
    counts = {}
    word = ""
    for ch in text.lower() + " ":
        if ch.isalpha():
            word += ch
        elif word:
            counts[word] = counts.get(word, 0) + 1
            word = ""
    return counts

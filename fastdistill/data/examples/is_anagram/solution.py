def is_anagram(a, b):
    """True if ``a`` and ``b`` use the same letters, ignoring case and spaces."""
    clean_a = sorted(a.replace(" ", "").lower())
    clean_b = sorted(b.replace(" ", "").lower())
    return clean_a == clean_b

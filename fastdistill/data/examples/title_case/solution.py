def title_case(text, minor=("a", "an", "the", "of", "and")):
    """Capitalise words except minor words (the first word is always capitalised)."""
    words = text.lower().split()
    out = []
    for i, word in enumerate(words):
        if i > 0 and word in minor:
            out.append(word)
        else:
            out.append(word[0].upper() + word[1:])
    return " ".join(out)

def group_by_length(words):
    """Group words by length: {length: [words in input order]}."""
    groups = {}
    for word in words:
        groups.setdefault(len(word), []).append(word)
    return groups

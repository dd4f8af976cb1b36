def longest_common_prefix(words):
    """Longest string that prefixes every word in ``words`` ("" for an empty list)."""
    if not words:
        return ""
    prefix = words[0]
    for word in words[1:]:
        i = 0
        while i < len(prefix) and i < len(word) and prefix[i] == word[i]:
            i += 1
        prefix = prefix[:i]
    return prefix

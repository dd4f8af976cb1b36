def invert(mapping):
    """Map each value to the sorted list of keys that had it."""
    out = {}
    for key, value in mapping.items():
        out.setdefault(value, []).append(key)
    for keys in out.values():
        keys.sort()
    return out

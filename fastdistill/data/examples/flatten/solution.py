def flatten(items):
    """Flatten arbitrarily nested lists/tuples into one list."""
    out = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(flatten(item))
        else:
            out.append(item)
    return out

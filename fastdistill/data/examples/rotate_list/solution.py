def rotate(items, k):
    """Rotate ``items`` right by ``k`` positions (negative k rotates left)."""
    if not items:
        return []
    k = k % len(items)
    return items[-k:] + items[:-k] if k else list(items)

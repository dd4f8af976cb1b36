def truncate(text, limit, suffix="..."):
    """Shorten ``text`` to at most ``limit`` characters, ending with ``suffix`` if cut."""
    if limit < len(suffix):
        raise ValueError("limit shorter than suffix")
    if len(text) <= limit:
        return text
    return text[:limit - len(suffix)] + suffix

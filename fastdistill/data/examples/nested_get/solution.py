def nested_get(data, path, default=None):
    """Follow dot-separated ``path`` through nested dicts; ``default`` if any key is missing."""
    current = data
    for key in path.split("."):
        if not isinstance(current, dict) or key not in current:
            return default
        current = current[key]
    return current

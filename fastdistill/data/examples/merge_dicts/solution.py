def merge_dicts(a, b):
    """Recursively merge ``b`` into a copy of ``a``; values from ``b`` win except nested dicts merge."""
    out = dict(a)
    for key, value in b.items():
        if key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out

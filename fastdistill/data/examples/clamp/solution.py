def clamp(x, lo, hi):
    """Limit ``x`` to the closed interval [lo, hi]; raises if lo > hi."""
    if lo > hi:
        raise ValueError("lo > hi")
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x

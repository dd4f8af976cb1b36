def histogram(values, bins, lo, hi):
    """Counts of ``values`` in ``bins`` equal-width bins over [lo, hi); out-of-range values ignored."""
    counts = [0] * bins
    width = (hi - lo) / bins
    for v in values:
        if lo <= v < hi:
            counts[int((v - lo) // width)] += 1
    return counts

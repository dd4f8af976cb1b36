def running_sum(numbers):
    """Prefix sums of ``numbers``."""
    total = 0
    out = []
    for n in numbers:
        total += n
        out.append(total)
    return out

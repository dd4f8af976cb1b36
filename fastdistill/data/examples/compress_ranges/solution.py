def compress_ranges(numbers):
    """Summarise sorted distinct integers: [1,2,3,5,7,8] -> "1-3,5,7-8"."""
    if not numbers:
        return ""
    parts = []
    start = prev = numbers[0]
    for n in numbers[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ",".join(parts)

def second_largest(numbers):
    """Second largest distinct value, or None if there is none."""
    distinct = sorted(set(numbers))
    if len(distinct) < 2:
        return None
    return distinct[-2]

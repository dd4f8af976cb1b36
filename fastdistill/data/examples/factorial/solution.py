def factorial(n):
    """n! for n >= 0; raises ValueError for negative n."""
    if n < 0:
        raise ValueError("negative")
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result

def fibonacci(n):
    """First ``n`` Fibonacci numbers starting 0, 1."""
    seq = []
    a, b = 0, 1
    for _ in range(n):
        seq.append(a)
        a, b = b, a + b
    return seq

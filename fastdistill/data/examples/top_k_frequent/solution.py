def top_k(items, k):
    """The ``k`` most frequent items, ties broken by first appearance."""
    counts = {}
    first = {}
    for index, item in enumerate(items):
        counts[item] = counts.get(item, 0) + 1
        first.setdefault(item, index)
    ranked = sorted(counts, key=lambda item: (-counts[item], first[item]))
    return ranked[:k]

def transpose(matrix):
    """Transpose a rectangular list-of-lists matrix."""
    if not matrix:
        return []
    return [[row[c] for row in matrix] for c in range(len(matrix[0]))]

def parse_kv(text):
    """Parse ``"a=1; b = two"`` into ``{"a": "1", "b": "two"}``; blank pairs are skipped."""
    result = {}
    for pair in text.split(";"):
        if not pair.strip():
            continue
        if "=" not in pair:
            raise ValueError(f"missing '=' in {pair!r}")
        key, value = pair.split("=", 1)
        result[key.strip()] = value.strip()
    return result

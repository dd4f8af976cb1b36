def caesar(text, shift):
    """Shift letters of ``text`` by ``shift`` places, keeping case; other characters unchanged."""
    out = []
    for ch in text:
        if ch.isalpha():
            base = ord("A") if ch.isupper() else ord("a")
            out.append(chr((ord(ch) - base + shift) % 26 + base))
        else:
            out.append(ch)
    return "".join(out)

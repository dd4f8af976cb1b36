from solution import rle_encode

def test_encode():
    assert rle_encode("aaabccdddd") == "a3b1c2d4"
    assert rle_encode("abc") == "a1b1c1"

def test_edges():
    assert rle_encode("") == ""
    assert rle_encode("z") == "z1"
    assert rle_encode("zz") == "z2"

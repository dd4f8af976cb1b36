from solution import title_case

def test_title():
    assert title_case("the lord of the rings") == "The Lord of the Rings"
    assert title_case("a tale OF two cities") == "A Tale of Two Cities"
    assert title_case("") == ""
    assert title_case("x") == "X"
    assert title_case("war and peace", minor=()) == "War And Peace"

from solution import parse_csv_line

def test_plain():
    assert parse_csv_line("a,b,c") == ["a", "b", "c"]
    assert parse_csv_line("") == [""]
    assert parse_csv_line("a,,b") == ["a", "", "b"]

def test_quoted():
    assert parse_csv_line('"x,y",z') == ["x,y", "z"]
    assert parse_csv_line('"say ""hi""",2') == ['say "hi"', "2"]
    assert parse_csv_line('"",a') == ["", "a"]

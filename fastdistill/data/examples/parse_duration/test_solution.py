import pytest
from solution import parse_duration

def test_parse():
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45s") == 45
    assert parse_duration("2h5s") == 7205
    assert parse_duration("10m") == 600
    assert parse_duration("") == 0

def test_errors():
    for bad in ("5", "h", "3x", "1h2"):
        with pytest.raises(ValueError):
            parse_duration(bad)

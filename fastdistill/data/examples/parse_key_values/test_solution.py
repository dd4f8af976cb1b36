import pytest
from solution import parse_kv

def test_parse():
    assert parse_kv("a=1; b = two") == {"a": "1", "b": "two"}
    assert parse_kv("k=v=w") == {"k": "v=w"}
    assert parse_kv("") == {}
    assert parse_kv(" ; x=1 ;") == {"x": "1"}

def test_error():
    with pytest.raises(ValueError):
        parse_kv("a=1; broken")

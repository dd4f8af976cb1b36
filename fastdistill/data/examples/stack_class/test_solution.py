import pytest
from solution import Stack

def test_lifo():
    s = Stack()
    assert s.is_empty() and len(s) == 0
    s.push(1)
    s.push(2)
    assert len(s) == 2 and not s.is_empty()
    assert s.peek() == 2
    assert s.pop() == 2
    assert s.pop() == 1
    assert s.is_empty()

def test_empty_errors():
    s = Stack()
    with pytest.raises(IndexError):
        s.pop()
    with pytest.raises(IndexError):
        s.peek()

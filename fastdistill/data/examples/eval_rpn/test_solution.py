import pytest
from solution import eval_rpn

def test_eval():
    assert eval_rpn(["2", "1", "+", "3", "*"]) == 9
    assert eval_rpn(["4", "13", "5", "/", "+"]) == 6
    assert eval_rpn(["7", "2", "-"]) == 5
    assert eval_rpn(["-7", "2", "/"]) == -3
    assert eval_rpn(["42"]) == 42

def test_malformed():
    with pytest.raises(ValueError):
        eval_rpn(["1", "2"])

import pytest
from solution import BankAccount

def test_flow():
    acct = BankAccount(10)
    acct.deposit(5)
    acct.withdraw(15)
    assert acct.balance == 0
    assert acct.history == [("deposit", 5), ("withdraw", 15)]
    assert BankAccount().balance == 0

def test_errors():
    acct = BankAccount(5)
    for bad in (0, -1):
        with pytest.raises(ValueError):
            acct.deposit(bad)
        with pytest.raises(ValueError):
            acct.withdraw(bad)
    with pytest.raises(ValueError):
        acct.withdraw(6)
    with pytest.raises(ValueError):
        BankAccount(-1)
    assert acct.balance == 5 and acct.history == []

class BankAccount:
    """Account with deposits, withdrawals (no overdraft) and a transaction history."""

    def __init__(self, balance=0):
        if balance < 0:
            raise ValueError("negative opening balance")
        self.balance = balance
        self.history = []

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("deposit must be positive")
        self.balance += amount
        self.history.append(("deposit", amount))

    def withdraw(self, amount):
        if amount <= 0:
            raise ValueError("withdrawal must be positive")
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.balance -= amount
        self.history.append(("withdraw", amount))

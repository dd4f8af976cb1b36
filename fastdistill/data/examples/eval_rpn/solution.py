def eval_rpn(tokens):
    """Evaluate integer Reverse Polish Notation with + - * and / (truncating toward zero)."""
    stack = []
    for token in tokens:
        if token in ("+", "-", "*", "/"):
            b = stack.pop()
            a = stack.pop()
            if token == "+":
                stack.append(a + b)
            elif token == "-":
                stack.append(a - b)
            elif token == "*":
                stack.append(a * b)
            else:
                stack.append(int(a / b))
        else:
            stack.append(int(token))
    if len(stack) != 1:
        raise ValueError("malformed expression")
    return stack[0]

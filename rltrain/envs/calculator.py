"""``env=calculator``: arithmetic questions with a calculator tool the model can learn to call.

The tool evaluates the expression the model writes by walking its syntax tree: numbers, + - * /
// % ** and parentheses only, no names, no calls, no attribute access, so nothing the model writes
is executed. Exponents and intermediate sizes are bounded so that ``9**9**9`` is an error message,
not a hung process.
"""
from __future__ import annotations

import ast
import operator

from rltrain.types import Sample

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT = 64
MAX_ABS = 10 ** 30
MAX_CHARS = 200


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression (see the module docstring).

    Raises:
        ValueError: anything that is not plain arithmetic, too long, or too large.
        ZeroDivisionError: division by zero.
    """
    if len(expression) > MAX_CHARS:
        raise ValueError(f"the expression is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r} as arithmetic") from None
    return _eval(tree.body)


def _eval(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponents above {MAX_EXPONENT} are not supported")
        value = _BINARY[type(node.op)](left, right)
        if isinstance(value, complex) or abs(value) > MAX_ABS:
            raise ValueError("the result is out of range")
        return value
    raise ValueError("only numbers, + - * / // % ** and parentheses are allowed")


class Calculator:
    """Answer an arithmetic question; the ``calculate`` tool does the arithmetic."""

    def reset(self, sample: Sample) -> str:
        return f"{sample.question} Use the calculator tool for the arithmetic."

    def calculate(self, expression: str) -> str:
        """Evaluate an arithmetic expression such as "(123 + 456) * 7" and return its value."""
        value = evaluate(expression)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)

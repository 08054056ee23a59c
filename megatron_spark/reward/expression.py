r"""A bounded, exact parser and evaluator for the arithmetic expressions a Countdown answer boxes.

Grammar (the usual precedence; ``*`` and ``/`` bind tighter than ``+`` and ``-``, all left
associative)::

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := INTEGER | '(' expr ')' | '-' factor

A unary minus negates what follows (``-7+30`` is ``30-7``: 7 is still used once, as sympy and
reasoning-gym's answers write it); no exponent, no implicit multiplication. ``\times``, ``\cdot``, ``×`` and ``x`` between operands read as ``*``;
``\div``, ``÷`` and ``:`` as ``/``; ``−`` (U+2212) as ``-``; ``\left(``/``\right)`` and ``{}``
LaTeX grouping braces are ignored. Arithmetic is on :class:`fractions.Fraction`, so ``7/2*2`` is
exactly 7 and division by zero is an error, never a float.

Nothing here calls ``eval``; the size limits (characters, numbers, nesting, digits) bound both the
time and the magnitude of any input, so a hostile response cannot stall a training step. Every
failure is an :class:`ExpressionError` with a short reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 256
"""Longest expression text accepted (after normalisation)."""
MAX_NUMBERS = 16
"""Most integer literals in one expression."""
MAX_DIGITS = 12
"""Most digits in one literal."""
MAX_DEPTH = 16
"""Deepest parenthesis nesting."""

OPERATORS = "+-*/"
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}

_REWRITES = (
    (re.compile(r"\\left\s*\(|\\left\s*\["), "("),
    (re.compile(r"\\right\s*\)|\\right\s*\]"), ")"),
    (re.compile(r"\\times|\\cdot|×|·"), "*"),
    (re.compile(r"\\div|÷"), "/"),
    (re.compile(r"−|–"), "-"),
    (re.compile(r"\\,|\\;|\\!|\\ |~"), " "),
)
_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/()x:\[\]]))")


class ExpressionError(ValueError):
    """The text is not an expression this module accepts (the reason is the message)."""


@dataclass(frozen=True)
class Node:
    """An integer leaf (``op`` empty), a binary operation over two sub-trees, or a negation
    (``op`` ``"neg"``, its operand in ``right``)."""

    value: Fraction
    op: str = ""
    left: Node | None = None
    right: Node | None = None

    @property
    def is_leaf(self) -> bool:
        return not self.op

    @property
    def is_binary(self) -> bool:
        return self.op in _PRECEDENCE


def leaf(n: int) -> Node:
    return Node(Fraction(n))


def negate(node: Node) -> Node:
    return Node(-node.value, "neg", None, node)


def combine(op: str, left: Node, right: Node) -> Node:
    """``left op right``; raises ExpressionError on division by zero."""
    a, b = left.value, right.value
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op == "*":
        value = a * b
    elif op == "/":
        if b == 0:
            raise ExpressionError("division by zero")
        value = a / b
    else:
        raise ValueError(f"unknown operator {op!r}")
    return Node(value, op, left, right)


def _normalise(text: str) -> str:
    for pattern, repl in _REWRITES:
        text = pattern.sub(repl, text)
    return text.replace("{", "").replace("}", "").replace("[", "(").replace("]", ")")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExpressionError(f"unexpected character {text[pos:].lstrip()[:1]!r}")
        number, symbol = m.groups()
        if number is not None:
            if len(number) > MAX_DIGITS:
                raise ExpressionError(f"a number has more than {MAX_DIGITS} digits")
            out.append(number)
        else:
            out.append({"x": "*", ":": "/"}.get(symbol, symbol))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.numbers = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ExpressionError("the expression ends early")
        self.pos += 1
        return tok

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = combine(op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            node = combine(op, node, self.factor())
        return node

    def factor(self) -> Node:
        tok = self.take()
        if tok == "-":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError(f"brackets or minus signs nested deeper than {MAX_DEPTH}")
            node = negate(self.factor())
            self.depth -= 1
            return node
        if tok == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError(f"brackets nested deeper than {MAX_DEPTH}")
            node = self.expr()
            if self.take() != ")":
                raise ExpressionError("unbalanced brackets")
            self.depth -= 1
            return node
        if tok.isdigit():
            self.numbers += 1
            if self.numbers > MAX_NUMBERS:
                raise ExpressionError(f"more than {MAX_NUMBERS} numbers")
            return leaf(int(tok))
        raise ExpressionError(f"expected a number or '(' but found {tok!r}")


def parse(text: str) -> Node:
    """The expression tree of ``text``; raises ExpressionError (with a reason) if it is not one."""
    if not isinstance(text, str):
        raise ExpressionError("not a string")
    if len(text) > 4 * MAX_CHARS:  # before any regex work on it
        raise ExpressionError(f"longer than {MAX_CHARS} characters")
    text = _normalise(text).strip()
    if not text:
        raise ExpressionError("empty")
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"longer than {MAX_CHARS} characters")
    parser = _Parser(_tokens(text))
    node = parser.expr()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r} after a complete expression")
    return node


def operands(node: Node) -> list[int]:
    """The integer literals of a tree, left to right."""
    if node.is_leaf:
        return [int(node.value)]
    if node.op == "neg":
        return operands(node.right)
    return operands(node.left) + operands(node.right)


def steps(node: Node) -> list[tuple[Fraction, str, Fraction, Fraction]]:
    """The operations in evaluation order (left sub-tree, right sub-tree, then the node):
    ``(a, op, b, result)`` per operation, so ``3+4*5`` gives ``[(4,*,5,20), (3,+,20,23)]``; a
    negation is the step ``0-x``."""
    if node.is_leaf:
        return []
    if node.op == "neg":
        return [*steps(node.right), (Fraction(0), "-", node.right.value, node.value)]
    return [*steps(node.left), *steps(node.right), (node.left.value, node.op, node.right.value, node.value)]


def format_number(x: Fraction) -> str:
    """``7``, ``-3`` or ``7/2``."""
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def render(node: Node) -> str:
    """The tree as text with only the brackets its structure needs: ``(3+4)*5``, ``3+4*5``,
    ``8-(3-1)``, ``8-3-1``; a negation inside another operation is bracketed, ``(-7)+30``.
    ``parse(render(t))`` is ``t``."""
    if node.is_leaf:
        return format_number(node.value)
    if node.op == "neg":
        inner = render(node.right)
        return f"-{inner}" if node.right.is_leaf or node.right.op == "neg" else f"-({inner})"
    prec = _PRECEDENCE[node.op]

    def side(child: Node, right: bool) -> str:
        text = render(child)
        if child.is_leaf:
            return text
        if child.op == "neg":
            return f"({text})"
        cp = _PRECEDENCE[child.op]
        # A right operand of equal precedence needs brackets, since every operator is left
        # associative (``8-(3-1)``, ``8/(4*2)``).
        return f"({text})" if cp < prec or (right and cp == prec) else text

    return f"{side(node.left, False)}{node.op}{side(node.right, True)}"

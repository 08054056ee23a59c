r"""The Countdown verifier: the boxed expression reaches the target with the offered numbers.

A problem's ground truth is a *spec*, written ``22 using 3 5 7`` (target, then the offered
numbers). A response earns 1.0 when its boxed content

* parses as an expression of integers, ``+ - * /`` and brackets (:mod:`.expression`: exact,
  bounded, no ``eval``), optionally followed by ``= target``,
* uses each offered number at most as often as it is offered, and no other number,
* evaluates exactly to the target (``6/4*4`` counts as 6);

anything else (no box, unbalanced brackets, division by zero, a number not offered or used twice,
an absurdly long box) earns 0.0 and never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from megatron_spark.errors import UserError
from megatron_spark.reward.expression import ExpressionError, Node, operands, parse

_SPEC = re.compile(r"^\s*(-?\d+)\s+using\s+((?:\d+\s*)+)$")


@dataclass(frozen=True)
class CountdownSpec:
    target: int
    numbers: tuple[int, ...]


def format_spec(spec: CountdownSpec) -> str:
    """``CountdownSpec(22, (3, 5, 7))`` -> ``22 using 3 5 7``."""
    return f"{spec.target} using {' '.join(map(str, spec.numbers))}"


def parse_spec(answer: str) -> CountdownSpec:
    """The spec an answer string writes; a UserError (a dataset or config mistake) otherwise."""
    m = _SPEC.match(answer)
    if m is None:
        raise UserError(f"countdown answer {answer!r}: expected 'TARGET using N1 N2 ...'")
    return CountdownSpec(int(m.group(1)), tuple(int(n) for n in m.group(2).split()))


def read_candidate(text: str, target: int) -> Node:
    """The expression of a boxed answer; ``expr = target`` is read as ``expr``. Raises
    ExpressionError when it is not one."""
    left, eq, right = text.partition("=")
    if eq:
        try:
            stated = int(right.strip())
        except ValueError:
            raise ExpressionError("'=' not followed by the target") from None
        if stated != target:
            raise ExpressionError("'=' not followed by the target")
    return parse(left)


def unused_numbers(used: list[int], offered: tuple[int, ...]) -> list[int] | None:
    """The offered numbers left, in their order, after taking each of ``used`` once (its first
    remaining occurrence), or None if one of ``used`` is not (or no longer) there."""
    left = list(offered)
    for n in used:
        if n not in left:
            return None
        left.remove(n)
    return left


def check_answer(candidate: str, answer: str) -> bool:
    """Whether the expression ``candidate`` solves the problem whose spec is ``answer``."""
    spec = parse_spec(answer)
    try:
        tree = read_candidate(candidate, spec.target)
    except ExpressionError:
        return False
    return unused_numbers(operands(tree), spec.numbers) is not None and tree.value == spec.target

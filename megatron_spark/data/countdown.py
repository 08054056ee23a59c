r"""Countdown: reach a target with the given numbers and ``+ - * /``, each number at most once.

The built-in task of the SPARK demo, chosen because checking an answer is much easier than finding
one: a solver has to search the ways of combining the numbers, a checker only evaluates the one
expression it is shown and compares the result with the target. SPARK's premise is exactly that
gap (a model that can check its answers can reject its own mistakes at test time).

A problem::

    prompt    Make 22 from 3 5 7.
    solution  \boxed{3*5+7}             (``solution: answer``, the default)
              3*5+7: 3*5=15. 15+7=22. \boxed{3*5+7}     (``solution: evaluated``)
    answer    22 using 3 5 7            (what the ``countdown`` verifier reads)
    reference 3*5+7                     (a correct final answer, as a response boxes it)

The generator draws the numbers, combines all of them left to right in a random order with random
operators (a division only where it is exact), and keeps the value as the target when it is a
whole number in ``[min_target, max_target]`` and none of the numbers already equals it. The
solution boxes that expression; ``solution: evaluated`` also writes it out and evaluates it one
operation at a time first (the order :func:`megatron_spark.reward.expression.steps` gives).

Why the default solution shows no arithmetic: every evaluation in such a solution ends on the
target, and a tiny model trained on them learnt that an evaluation ends on the target: checking a
wrong candidate, it wrote the target as the result of the last step (``10+7=70``) in most checks of
its own mistakes (measured on the warm start: docs/experiments/tiny_countdown.md). With boxed
answers only, the arithmetic the model sees is the judge's checks, half of which end elsewhere.
The evaluation written after the expression does not help the policy choose it either.

Why not reasoning-gym's countdown: its scorer evaluates the answer with sympy's ``parse_expr``
(``eval`` underneath, with no bound on time or size), gives partial credit for wrong answers,
requires every number to be used, and its generator draws from ranges meant for large models; its
package also pulls ten unrelated dependencies. Our verifier (:mod:`megatron_spark.reward.countdown`)
evaluates exactly, bounded, with a 0/1 reward, and tests cross-check it against reasoning-gym's
scorer on reasoning-gym's own problems.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import permutations, product
from typing import Literal

from megatron_spark.data.tasks import Problem
from megatron_spark.errors import UserError
from megatron_spark.reward.countdown import CountdownSpec, check_answer, format_spec
from megatron_spark.reward.expression import Node, combine, format_number, leaf, render, steps


@dataclass(frozen=True)
class CountdownConfig:
    """Difficulty and size of the Countdown task."""

    min_numbers: int = 3
    """Fewest numbers offered (at least 2)."""
    max_numbers: int = 3
    """Most numbers offered; the count is drawn uniformly in [min, max]."""
    min_value: int = 1
    """Smallest number offered (at least 1)."""
    max_value: int = 9
    """Largest number offered."""
    operators: str = "+-*"
    """Operators the generating expressions use: a non-empty subset of ``+-*/`` (answers may
    use any of the four)."""
    min_target: int = 1
    """Smallest target."""
    max_target: int = 99
    """Largest target."""
    held_out_size: int = 200
    """Number of distinct held-out problems, never returned by the train split."""
    solution: Literal["answer", "evaluated"] = "answer"
    """What a worked solution (the warm start's target) holds: ``answer``, the boxed expression
    alone; ``evaluated``: the expression, its evaluation step by step, then the box."""
    seed: int = 0
    """Seed of both splits; the same seed gives the same problems."""


COUNTDOWN_OPERATORS = "+-*/"
MAX_COUNTDOWN_NUMBERS = 6
MAX_COUNTDOWN_VALUE = 10**6


def check_countdown_config(cfg: CountdownConfig, source: str = "countdown task") -> None:
    """Raise a UserError naming the first field of ``cfg`` that cannot work."""
    if not 2 <= cfg.min_numbers <= MAX_COUNTDOWN_NUMBERS:
        raise UserError(f"{source}: min_numbers={cfg.min_numbers}, expected 2..{MAX_COUNTDOWN_NUMBERS}")
    if not cfg.min_numbers <= cfg.max_numbers <= MAX_COUNTDOWN_NUMBERS:
        raise UserError(
            f"{source}: max_numbers={cfg.max_numbers}, expected {cfg.min_numbers}..{MAX_COUNTDOWN_NUMBERS}"
        )
    if not 1 <= cfg.min_value <= cfg.max_value <= MAX_COUNTDOWN_VALUE:
        raise UserError(
            f"{source}: min_value={cfg.min_value}, max_value={cfg.max_value}, expected "
            f"1 <= min_value <= max_value <= {MAX_COUNTDOWN_VALUE}"
        )
    ops = cfg.operators
    if not ops or set(ops) - set(COUNTDOWN_OPERATORS) or len(set(ops)) != len(ops):
        raise UserError(
            f"{source}: operators='{ops}', expected distinct characters from '{COUNTDOWN_OPERATORS}'"
        )
    if not 1 <= cfg.min_target <= cfg.max_target:
        raise UserError(
            f"{source}: min_target={cfg.min_target}, max_target={cfg.max_target}, expected "
            f"1 <= min_target <= max_target"
        )
    if cfg.held_out_size < 0:
        raise UserError(f"{source}: held_out_size={cfg.held_out_size}, expected >= 0")


def random_tree(
    numbers: list[int], operators: str, rng: random.Random, left_deep: bool = True
) -> Node | None:
    """A random binary tree over all ``numbers`` (in a random order), or None when the drawn
    division is not exact or divides by zero. ``left_deep`` (the generator's choice): the numbers
    are combined left to right, ``((a op b) op c) op d``, so a solution reads and evaluates in
    one pass, as its check does; else any tree shape can appear."""
    nodes = [leaf(n) for n in numbers]
    rng.shuffle(nodes)
    while len(nodes) > 1:
        i = 0 if left_deep else rng.randrange(len(nodes) - 1)  # combine two neighbours
        op = rng.choice(operators)
        a, b = nodes[i], nodes[i + 1]
        if op == "/" and (b.value == 0 or (a.value / b.value).denominator != 1):
            return None
        nodes[i : i + 2] = [combine(op, a, b)]
    return nodes[0]


def worked_solution(expression: Node, evaluated: bool = True) -> str:
    r"""``3*5+7: 3*5=15. 15+7=22. \boxed{3*5+7}`` (``evaluated``), or ``\boxed{3*5+7}``."""
    text = render(expression)
    if not evaluated:
        return f"\\boxed{{{text}}}"
    work = " ".join(
        f"{format_number(a)}{op}{format_number(b)}={format_number(c)}." for a, op, b, c in steps(expression)
    )
    return f"{text}: {work} \\boxed{{{text}}}"


def countdown_problem(uid: str, numbers: list[int], expression: Node, evaluated: bool = False) -> Problem:
    target = int(expression.value)
    return Problem(
        uid=uid,
        prompt=f"Make {target} from {' '.join(map(str, numbers))}.",
        answer=format_spec(CountdownSpec(target, tuple(numbers))),
        solution=worked_solution(expression, evaluated),
        reference=render(expression),
    )


def draw_problem(cfg: CountdownConfig, rng: random.Random, uid: str) -> Problem:
    """One problem; redraws until the expression's value is a valid target."""
    while True:
        k = rng.randint(cfg.min_numbers, cfg.max_numbers)
        numbers = [rng.randint(cfg.min_value, cfg.max_value) for _ in range(k)]
        tree = random_tree(numbers, cfg.operators, rng)
        if tree is None or tree.value.denominator != 1:
            continue
        target = int(tree.value)
        if cfg.min_target <= target <= cfg.max_target and target not in numbers:
            return countdown_problem(uid, numbers, tree, cfg.solution == "evaluated")


class CountdownTask:
    """Countdown: an unbounded train split and a fixed held-out split.

    Train problem ``i`` is drawn from a generator seeded by ``(seed, i)``; a draw whose prompt is
    a held-out one is drawn again by the same generator, so the result is a function of ``i``.
    """

    name = "countdown"

    def __init__(self, cfg: CountdownConfig):
        check_countdown_config(cfg)
        self.cfg = cfg
        self._held_out = self._draw_held_out()
        self._held_out_prompts = {p.prompt for p in self._held_out}

    def _draw_held_out(self) -> list[Problem]:
        rng = random.Random(f"countdown:{self.cfg.seed}:held_out")
        seen: set[str] = set()
        problems: list[Problem] = []
        attempts = 0
        while len(problems) < self.cfg.held_out_size:
            attempts += 1
            if attempts > 100 * (self.cfg.held_out_size + 10):
                raise UserError(
                    f"countdown task: found only {len(problems)} distinct held-out problems for "
                    f"held_out_size={self.cfg.held_out_size}; widen the value or target range"
                )
            p = draw_problem(self.cfg, rng, f"countdown:{self.cfg.seed}:held_out:{len(problems)}")
            if p.prompt not in seen:
                seen.add(p.prompt)
                problems.append(p)
        return problems

    def num_train(self) -> int | None:
        return None

    def train_problem(self, index: int) -> Problem:
        rng = random.Random(f"countdown:{self.cfg.seed}:train:{index}")
        while True:
            p = draw_problem(self.cfg, rng, f"countdown:{self.cfg.seed}:train:{index}")
            if p.prompt not in self._held_out_prompts:
                return p

    def held_out(self) -> list[Problem]:
        return list(self._held_out)


# ---------------------------------------------------------------------------------------------
# Solving (for tests and for right candidates other than the reference)


def solutions(
    numbers: list[int], target: int, operators: str = COUNTDOWN_OPERATORS, limit: int = 64
) -> list[str]:
    """Up to ``limit`` distinct expressions (as rendered text) that reach ``target`` with
    ``numbers``, each used at most once; exhaustive over orders, subsets and tree shapes, so
    keep ``numbers`` short (it is exponential in their count)."""
    found: dict[str, None] = {}

    def trees(items: tuple[Node, ...]):
        if len(items) == 1:
            yield items[0]
            return
        for split in range(1, len(items)):
            for left, right in product(trees(items[:split]), trees(items[split:])):
                for op in operators:
                    if op == "/" and right.value == 0:
                        continue
                    yield combine(op, left, right)

    for size in range(1, len(numbers) + 1):
        for chosen in permutations(numbers, size):
            for tree in trees(tuple(leaf(n) for n in chosen)):
                if tree.value == target:
                    found.setdefault(render(tree))
                    if len(found) >= limit:
                        return list(found)
    return list(found)


def is_correct(candidate: str, answer: str) -> bool:
    """Whether ``candidate`` (an expression, not a response) solves the problem ``answer`` specifies."""
    return check_answer(candidate, answer)

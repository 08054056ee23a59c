"""Problems to train on: the task interface, the synthetic arithmetic task, and the prompt sampler.

A :class:`TaskSource` hands out problems by index, so that a run can be resumed at the exact
problem it stopped at; :class:`ProblemSampler` decides the order. Problem ``i`` of the arithmetic
task depends only on the config and ``i``, never on what was drawn before it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from megatron_spark.errors import UserError


@dataclass(frozen=True)
class Problem:
    """One prompt with its ground truth."""

    uid: str
    """Stable id: the same problem has the same uid in every run."""
    prompt: str
    """The question, as plain text (the tokenizer adds any chat template)."""
    answer: str
    """Ground truth, compared by a verifier with what the response boxes."""
    solution: str | None = None
    """A worked answer ending in ``\\boxed{answer}`` (for supervised warm-up), if known."""
    reference: str | None = None
    """A correct final answer as a response boxes it, where ``answer`` is not one (Countdown's
    ``answer`` is the problem's spec, ``22 using 3 5 7``); None: ``answer`` is one."""

    @property
    def right_answer(self) -> str:
        """A correct final answer, as a judge item shows it."""
        return self.reference if self.reference is not None else self.answer


class TaskSource(Protocol):
    """A train split addressed by index and a fixed held-out split."""

    name: str

    def num_train(self) -> int | None:
        """Number of train problems, or None for an unbounded (synthetic) source."""
        ...

    def train_problem(self, index: int) -> Problem:
        """Train problem ``index``; the same index always gives the same problem."""
        ...

    def held_out(self) -> list[Problem]:
        """Problems never returned by ``train_problem``, for evaluation."""
        ...


# ---------------------------------------------------------------------------------------------
# Arithmetic


@dataclass(frozen=True)
class ArithmeticConfig:
    """Multi-operand integer expressions such as ``12+34*5``, with ``*`` binding tighter."""

    min_operands: int = 2
    """Fewest operands in one expression (at least 2)."""
    max_operands: int = 2
    """Most operands in one expression; the count is drawn uniformly in [min, max]."""
    max_digits: int = 2
    """Operands are drawn uniformly from [0, 10**max_digits)."""
    operators: str = "+-"
    """Operators to draw from, uniformly: a non-empty subset of ``+-*``."""
    held_out_size: int = 200
    """Number of distinct held-out problems, never seen in training."""
    seed: int = 0
    """Seed of both splits; the same seed gives the same problems."""


ARITH_OPERATORS = "+-*"
MAX_ARITH_DIGITS = 9


def check_arithmetic_config(cfg: ArithmeticConfig, source: str = "arithmetic task") -> None:
    """Raise a UserError naming the first field of ``cfg`` that cannot work."""
    if cfg.min_operands < 2:
        raise UserError(f"{source}: min_operands={cfg.min_operands}, expected >= 2")
    if cfg.max_operands < cfg.min_operands:
        raise UserError(
            f"{source}: max_operands={cfg.max_operands} is less than min_operands={cfg.min_operands}"
        )
    if not 1 <= cfg.max_digits <= MAX_ARITH_DIGITS:
        raise UserError(f"{source}: max_digits={cfg.max_digits}, expected 1..{MAX_ARITH_DIGITS}")
    ops = cfg.operators
    if not ops or set(ops) - set(ARITH_OPERATORS) or len(set(ops)) != len(ops):
        raise UserError(f"{source}: operators='{ops}', expected distinct characters from '{ARITH_OPERATORS}'")
    if cfg.held_out_size < 0:
        raise UserError(f"{source}: held_out_size={cfg.held_out_size}, expected >= 0")
    distinct = count_arithmetic_problems(cfg)
    if cfg.held_out_size > distinct // 2:
        raise UserError(
            f"{source}: held_out_size={cfg.held_out_size} is more than half of the {distinct} "
            f"distinct problems this config can produce; lower it or widen the config"
        )


def count_arithmetic_problems(cfg: ArithmeticConfig) -> int:
    """Distinct expressions: sum over operand counts k of values**k * operators**(k - 1)."""
    values, ops = 10**cfg.max_digits, len(cfg.operators)
    return sum(values**k * ops ** (k - 1) for k in range(cfg.min_operands, cfg.max_operands + 1))


def draw_expression(cfg: ArithmeticConfig, rng: random.Random) -> tuple[list[int], list[str]]:
    """Operands and the operators between them (one fewer)."""
    k = rng.randint(cfg.min_operands, cfg.max_operands)
    operands = [rng.randrange(10**cfg.max_digits) for _ in range(k)]
    operators = [rng.choice(cfg.operators) for _ in range(k - 1)]
    return operands, operators


def format_expression(operands: list[int], operators: list[str]) -> str:
    """``[12, 34, 5], ['+', '-']`` -> ``12+34-5``."""
    parts = [str(operands[0])]
    for op, value in zip(operators, operands[1:]):
        parts += [op, str(value)]
    return "".join(parts)


def _apply(a: int, op: str, b: int) -> int:
    return a * b if op == "*" else a + b if op == "+" else a - b


def worked_steps(operands: list[int], operators: list[str]) -> tuple[list[str], int]:
    """The steps of evaluating an expression and its value.

    Products first, left to right (``*`` binds tighter), then sums and differences left to right,
    one step ``a op b=c.`` per operator: ``3+4*5-2`` -> ``4*5=20. 3+20=23. 23-2=21.``.
    """
    steps: list[str] = []
    terms, signs = [operands[0]], []
    for op, value in zip(operators, operands[1:]):
        if op == "*":
            product = terms[-1] * value
            steps.append(f"{terms[-1]}*{value}={product}.")
            terms[-1] = product
        else:
            terms.append(value)
            signs.append(op)
    total = terms[0]
    for op, value in zip(signs, terms[1:]):
        result = _apply(total, op, value)
        steps.append(f"{total}{op}{value}={result}.")
        total = result
    return steps, total


def arithmetic_problem(uid: str, operands: list[int], operators: list[str]) -> Problem:
    """Prompt ``Compute 12+34-5.``, solution ``12+34=46. 46-5=41. \\boxed{41}``."""
    steps, value = worked_steps(operands, operators)
    return Problem(
        uid=uid,
        prompt=f"Compute {format_expression(operands, operators)}.",
        answer=str(value),
        solution=" ".join([*steps, f"\\boxed{{{value}}}"]),
    )


class ArithmeticTask:
    """Synthetic arithmetic: an unbounded train split and a fixed held-out split.

    Train problem ``i`` is drawn from a generator seeded by ``(seed, i)``; if the expression is a
    held-out one, the same generator draws again, so the result is still a function of ``i``.
    """

    name = "arithmetic"

    def __init__(self, cfg: ArithmeticConfig):
        check_arithmetic_config(cfg)
        self.cfg = cfg
        self._held_out = self._draw_held_out()
        self._held_out_exprs = {p.prompt for p in self._held_out}

    def _draw_held_out(self) -> list[Problem]:
        rng = random.Random(f"arith:{self.cfg.seed}:held_out")
        seen: set[str] = set()
        problems = []
        while len(problems) < self.cfg.held_out_size:
            operands, operators = draw_expression(self.cfg, rng)
            expr = format_expression(operands, operators)
            if expr in seen:
                continue
            seen.add(expr)
            uid = f"arith:{self.cfg.seed}:held_out:{len(problems)}"
            problems.append(arithmetic_problem(uid, operands, operators))
        return problems

    def num_train(self) -> int | None:
        return None

    def train_problem(self, index: int) -> Problem:
        rng = random.Random(f"arith:{self.cfg.seed}:train:{index}")
        while True:
            operands, operators = draw_expression(self.cfg, rng)
            problem = arithmetic_problem(f"arith:{self.cfg.seed}:train:{index}", operands, operators)
            if problem.prompt not in self._held_out_exprs:
                return problem

    def held_out(self) -> list[Problem]:
        return list(self._held_out)


# ---------------------------------------------------------------------------------------------
# Sampling


class ProblemSampler:
    """Batches of train problems in a reproducible, resumable order.

    A finite source is walked one epoch at a time in a permutation seeded by ``(seed, epoch)``;
    a batch that runs past the end of an epoch continues into the next one. An unbounded source
    is walked in index order (its problems are already random). The position is two plain ints,
    so a run resumed from :meth:`state_dict` draws exactly the batches it would have drawn.
    """

    def __init__(self, source: TaskSource, seed: int = 0):
        self.source = source
        self.seed = seed
        self.epoch = 0
        self.position = 0
        """Next index into the epoch's permutation (finite) or next train index (unbounded)."""
        self._size = source.num_train()
        if self._size is not None and self._size < 1:
            raise UserError(f"task '{source.name}' has no train problems")
        self._order: np.ndarray | None = None

    def _permutation(self) -> np.ndarray:
        if self._order is None:
            self._order = np.random.default_rng((self.seed, self.epoch)).permutation(self._size)
        return self._order

    def _next_index(self) -> int:
        if self._size is None:
            self.position += 1
            return self.position - 1
        if self.position == self._size:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        index = int(self._permutation()[self.position])
        self.position += 1
        return index

    def next_batch(self, num_prompts: int) -> list[Problem]:
        """The next ``num_prompts`` problems."""
        if num_prompts < 1:
            raise UserError(f"num_prompts={num_prompts}, expected >= 1")
        return [self.source.train_problem(self._next_index()) for _ in range(num_prompts)]

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = None

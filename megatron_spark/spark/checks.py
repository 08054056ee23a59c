r"""What SPARK needs to know about a task beyond its problems: how a judge checks an answer.

One object per task kind (:func:`checks_for`), used wherever SPARK builds judge or reflection
text that is not a policy rollout:

* ``perturb``: a wrong final answer close to a right one, for the warm start's judge and
  reflection examples and for held-out judge items, so a judge is also tested on mistakes it did
  not make itself;
* ``reasoning``: the worked check a judge writes before its verdict in the warm start's
  examples (the verdict itself is not taught there); None where the task has no mechanical check
  (free-form math: the judge answers with its verdict);
* ``attempt``: a whole wrong response ending in a given final answer, for reflection prompts that
  show the attempt (None: show only the final answer);
* ``vote_key``: what majority voting compares (an expression's value for Countdown, whose
  answers have no canonical form).

Built-in checks:

* arithmetic: re-derive the answer, then one subtraction per candidate (own result minus
  candidate; 0 means right): :func:`megatron_spark.spark.templates.judge_response`;
* countdown: per candidate, evaluate it one operation at a time (``3*5=15. 15+7=22.``), then set
  its value beside the target digit by digit, each pair of digits marked same or not, and say
  whether the two are equal (23 against 22: ``22= 32!: different.``; :func:`comparison`). Written
  as ``23 vs 22: different.``, the tiny model called two numbers sharing a digit equal (42 against
  48) for most of the own mistakes its judge accepted; side by side, each digit is compared with
  the token before it. The check evaluates the candidate; it never
  searches for a solution, which is what makes checking easier than solving. It does not check
  which numbers the candidate uses (the verifier does): a candidate that reaches the target with
  a number not offered passes it. Writing the unused numbers after each step made the tiny
  model's checks less reliable overall, and a subtraction from the target (the arithmetic task's
  check) was written ``=0`` for most wrong candidates (measured: docs/experiments/tiny_countdown.md).
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence
from fractions import Fraction

from megatron_spark.data.countdown import worked_solution
from megatron_spark.data.tasks import Problem
from megatron_spark.reward.countdown import parse_spec, read_candidate, unused_numbers
from megatron_spark.reward.expression import (
    ExpressionError,
    Node,
    combine,
    format_number,
    leaf,
    negate,
    operands,
    parse,
    render,
)
from megatron_spark.spark import templates
from megatron_spark.spark.perturb import perturb_answer, solution_steps, wrong_solution


class TaskChecks:
    """Free-form answers (datasets): integer answers are perturbed by small offsets; no
    mechanical check; votes compare the answer text."""

    styles = templates.Styles(judge="question_first", reflection="question_first")
    """Where judge and reflection prompts put the question (:data:`templates.Style`)."""

    def perturb(self, problem: Problem, rng: random.Random) -> str | None:
        return perturb_answer(problem.right_answer, rng)

    def reasoning(self, problem: Problem, candidates: Sequence[str]) -> str | None:
        return None

    def attempt(self, problem: Problem, final: str) -> str | None:
        return None

    def vote_key(self, problem: Problem, final: str) -> Hashable | None:
        return final.strip() or None

    def practice(self, problem: Problem, rng: random.Random, compare: float = 0.5) -> tuple[str, str] | None:
        """A ``(prompt, response)`` exercise of the skill the judge's check is made of, or None
        when the task's check has no separate skill to practise. ``compare``: the share of
        exercises that also practise the check's comparison, where it has one."""
        return None


class ArithmeticChecks(TaskChecks):
    styles = templates.Styles(judge="question_last", reflection="question_last")

    def reasoning(self, problem: Problem, candidates: Sequence[str]) -> str | None:
        """None without a worked solution, or for a candidate that is not an integer (a policy
        answer can be anything; the check is a subtraction)."""
        if not problem.solution or not all(_is_integer(c) for c in candidates):
            return None
        # judge_response writes "<steps> <checks> \boxed{v}": keep everything before the box.
        text = templates.judge_response(solution_steps(problem.solution), problem.answer, candidates, "")
        return text.rpartition("\\boxed{")[0].rstrip()

    def attempt(self, problem: Problem, final: str) -> str | None:
        if not problem.solution:
            return None
        return wrong_solution(problem.solution, problem.answer, final)


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _operations(node: Node) -> list[Node]:
    """The operations of a tree in evaluation order (children first, left before right)."""
    if node.is_leaf:
        return []
    inner = (
        _operations(node.right) if node.op == "neg" else [*_operations(node.left), *_operations(node.right)]
    )
    return [*inner, node]


def _step(node: Node) -> str:
    """One operation as the check writes it: ``15+7=22`` (a negation: ``0-3=-3``)."""
    a = "0" if node.op == "neg" else format_number(node.left.value)
    op = "-" if node.op == "neg" else node.op
    return f"{a}{op}{format_number(node.right.value)}={format_number(node.value)}"


def near_miss(value: Fraction, rng: random.Random) -> str:
    """A number written like ``value`` but different: one digit changed, the digits swapped, or
    a few off (an integer for a fractional value)."""
    if value.denominator != 1:
        return str(math.floor(value) + rng.choice((0, 1)))
    n = value.numerator
    digits = str(abs(n))
    kind = rng.choice(("digit", "swap", "offset"))
    if kind == "swap" and len(digits) > 1 and digits[0] != digits[-1]:
        digits = digits[::-1]
    elif kind == "digit":
        k = rng.randrange(len(digits))
        d = rng.choice([c for c in "0123456789" if c != digits[k] and (k or len(digits) == 1 or c != "0")])
        digits = digits[:k] + d + digits[k + 1 :]
    else:
        return str(n + rng.choice((-3, -2, -1, 1, 2, 3)))
    return ("-" if n < 0 else "") + digits


def comparison(value: Fraction, versus: str) -> str:
    """The check's last step: ``value`` beside the number ``versus``, digit by digit when both are
    non-negative integers (right-aligned, the shorter padded with zeros; each pair of digits, the
    value's first, then ``=`` or ``!``), then the verdict on the whole: ``44= 28!: different.``
    for 42 against 48; ``-3 vs 17: different.`` otherwise."""
    shown = format_number(value)
    try:
        same = "equal" if Fraction(versus) == value else "different"
    except (ValueError, ZeroDivisionError):
        same = "different"
    if value.denominator != 1 or value < 0 or not (versus.isascii() and versus.isdigit()):
        return f"{shown} vs {versus}: {same}."
    width = max(len(shown), len(versus))
    a, b = shown.zfill(width), versus.zfill(width)
    pairs = " ".join(f"{x}{y}{'=' if x == y else '!'}" for x, y in zip(a, b))
    return f"{pairs}: {same}."


def countdown_check(candidate: str, answer: str) -> str:
    """The worked check of one Countdown candidate (module docstring): ``3*5=15. 15+7=22. 22= 22=:
    equal.``; ``It cannot be read.`` when the candidate is not an expression."""
    spec = parse_spec(answer)
    try:
        tree = read_candidate(candidate, spec.target)
    except ExpressionError:
        return "It cannot be read."
    parts = [f"{_step(node)}." for node in _operations(tree)]
    parts.append(comparison(tree.value, str(spec.target)))
    return " ".join(parts)


class CountdownChecks(TaskChecks):
    # A check reads the candidate(s) just before it; a reflection starts right after the question,
    # as a policy answer does (with the wrong attempt just before it, the tiny model's
    # reflections copied it: 18% right at the warm start, against 35% for plain answers).
    styles = templates.Styles(judge="question_first", reflection="question_last")

    def perturb(self, problem: Problem, rng: random.Random) -> str | None:
        return perturb_countdown(problem, rng)

    def reasoning(self, problem: Problem, candidates: Sequence[str]) -> str | None:
        if len(candidates) == 1:
            return countdown_check(candidates[0], problem.answer)
        if len(candidates) != 2:
            raise ValueError(f"a judge checks one or two candidates, got {len(candidates)}")
        # B first: every A/B verdict (pointwise A = correct, pairwise A) follows the last check.
        a, b = candidates
        return f"B: {countdown_check(b, problem.answer)} A: {countdown_check(a, problem.answer)}"

    def attempt(self, problem: Problem, final: str) -> str | None:
        try:
            return worked_solution(parse(final))
        except ExpressionError:
            return None

    def practice(self, problem: Problem, rng: random.Random, compare: float = 0.5) -> tuple[str, str] | None:
        """Evaluate an expression step by step, in the check's own step form, with no target in
        sight: the problem's reference answer or a perturbation of it, at random
        (``Compute (8-1)*2.`` -> ``8-1=7. 7*2=14. \\boxed{14}``). A ``compare`` share of the
        exercises then set the value beside a number, the check's last step (:func:`comparison`),
        which is the value itself or a near miss (one digit changed, the digits swapped, a few off:
        ``Compute (8-1)*2 vs 41.`` -> ``8-1=7. 7*2=14. 14! 41!: different. \\boxed{14}``): without
        them the tiny model's checks called ``13`` and ``17`` equal for a third of wrong candidates."""
        expr = self.perturb(problem, rng) if rng.random() < 0.5 else None
        try:
            tree = parse(expr or problem.right_answer)
        except ExpressionError:
            return None
        work = " ".join(f"{_step(n)}." for n in _operations(tree))
        value = format_number(tree.value)
        if rng.random() < compare:
            versus = value if rng.random() < 0.5 else near_miss(tree.value, rng)
            return (
                f"Compute {render(tree)} vs {versus}.",
                f"{work} {comparison(tree.value, versus)} \\boxed{{{value}}}".lstrip(),
            )
        return f"Compute {render(tree)}.", f"{work} \\boxed{{{value}}}".lstrip()

    def vote_key(self, problem: Problem, final: str) -> Hashable | None:
        """The candidate's value when it uses only offered numbers; None otherwise (no vote)."""
        spec = parse_spec(problem.answer)
        try:
            tree = read_candidate(final, spec.target)
        except ExpressionError:
            return None
        if unused_numbers(operands(tree), spec.numbers) is None:
            return None
        return tree.value


def checks_for(task_name: str) -> TaskChecks:
    """The checks of a task (by :attr:`TaskSource.name`); datasets get the free-form ones."""
    return {"arithmetic": ArithmeticChecks, "countdown": CountdownChecks}.get(task_name, TaskChecks)()


# ---------------------------------------------------------------------------------------------
# Countdown perturbations

PERTURBATIONS = ("operator", "number", "fold", "drop")
"""``operator``: one operator changed; ``number``: one operand replaced by a nearby value or by
another offered number (a number not offered, or one used twice); ``fold``: a sub-expression
replaced by its value (reaches the target with a number not offered); ``drop``: one operand and
its operator removed."""


def _internal(node: Node) -> list[Node]:
    """The binary operations of a tree (negations are not perturbed)."""
    if node.is_leaf:
        return []
    if node.op == "neg":
        return _internal(node.right)
    return [*_internal(node.left), *_internal(node.right), node]


def _leaves(node: Node) -> list[Node]:
    if node.is_leaf:
        return [node]
    if node.op == "neg":
        return _leaves(node.right)
    return [*_leaves(node.left), *_leaves(node.right)]


def _replace(node: Node, old: Node, new: Node) -> Node:
    """``node`` with the sub-tree ``old`` (by identity) replaced by ``new``, values recomputed."""
    if node is old:
        return new
    if node.is_leaf:
        return node
    if node.op == "neg":
        return negate(_replace(node.right, old, new))
    return combine(node.op, _replace(node.left, old, new), _replace(node.right, old, new))


def _one_perturbation(kind: str, tree: Node, numbers: tuple[int, ...], rng: random.Random) -> Node | None:
    if kind == "operator":
        node = rng.choice(_internal(tree))
        op = rng.choice([o for o in "+-*" if o != node.op])
        return _replace(tree, node, combine(op, node.left, node.right))
    if kind == "number":
        old = rng.choice(_leaves(tree))
        value = int(old.value)
        choices = [n for n in (value - 1, value + 1, *numbers) if n != value and n >= 0]
        return _replace(tree, old, leaf(rng.choice(choices)))
    if kind == "fold":
        inner = [n for n in _internal(tree) if n is not tree]
        if not inner:
            return None
        node = rng.choice(inner)
        if node.value.denominator != 1 or node.value < 0:
            return None
        return _replace(tree, node, leaf(int(node.value)))
    if kind == "drop":
        node = rng.choice(_internal(tree))
        return _replace(tree, node, rng.choice((node.left, node.right)))
    raise ValueError(f"unknown perturbation {kind!r}")


def perturb_countdown(
    problem: Problem, rng: random.Random, kinds: Sequence[str] = PERTURBATIONS
) -> str | None:
    """A wrong candidate near the problem's reference answer (a perturbation of ``kinds``, drawn
    at random), or None when none of a few draws is wrong."""
    spec = parse_spec(problem.answer)
    tree = parse(problem.right_answer)
    for _ in range(16):
        try:
            cand = _one_perturbation(rng.choice(kinds), tree, spec.numbers, rng)
        except ExpressionError:  # a perturbed division by zero
            continue
        if cand is None:
            continue
        used_ok = unused_numbers(operands(cand), spec.numbers) is not None
        if not (used_ok and cand.value == Fraction(spec.target)):
            return render(cand)
    return None

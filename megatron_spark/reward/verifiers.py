"""Verifiers: score one response against its ground truth.

Each verifier takes the response text and the answer string and returns a :class:`Verdict`.
The built-in ones read the response's ``\\boxed{...}`` and give 1.0 or 0.0; a user function
gives any finite float. Every check runs under a wall-clock limit (``timeout_s``): a check that
runs past it scores 0.0 with ``timed_out=True`` and a logged warning, so one pathological response
cannot stall a training step.

A user reward function is five lines::

    # my_rewards.py
    def reward(response: str, answer: str) -> float:
        return 1.0 if answer in response else 0.0

and is named ``my_rewards:reward`` (``kind: function``).
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from megatron_spark.errors import UserError
from megatron_spark.reward.countdown import check_answer
from megatron_spark.reward.extract import BoxChoice, extract_boxed
from megatron_spark.reward.timeout import CallTimedOut, call_with_timeout

logger = logging.getLogger(__name__)

VerifierKind = Literal["math", "exact", "choice", "countdown", "function"]
VERIFIER_KINDS = ("math", "exact", "choice", "countdown", "function")
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Verdict:
    """The result of verifying one response."""

    reward: float
    """1.0 correct, 0.0 wrong (a missing answer is wrong); any float from a user function."""
    extracted: str | None
    """The answer read from the response (the box content), or None if there was none."""
    timed_out: bool = False
    """Whether the check ran past its limit (the reward is then 0.0)."""


class Verifier(Protocol):
    def __call__(self, response: str, answer: str) -> Verdict: ...


def _timed(check: Callable[[], float], extracted: str | None, timeout_s: float, what: str) -> Verdict:
    """``Verdict(check(), extracted)``, or a timed-out zero verdict if ``check`` runs too long."""
    try:
        return Verdict(reward=call_with_timeout(check, timeout_s), extracted=extracted)
    except CallTimedOut:
        logger.warning("%s verifier: no verdict within %g s; reward 0", what, timeout_s)
        return Verdict(reward=0.0, extracted=extracted, timed_out=True)


# ---------------------------------------------------------------------------------------------
# Math (math-verify)


def _quiet_math_verify_timeout_warning() -> None:
    """math-verify warns once that its own timeout is off; ours replaces it (see timeout.py)."""
    from math_verify import grader, parser

    for module in (grader, parser):
        if hasattr(module, "TIMEOUT_WARNING_SHOWN"):
            module.TIMEOUT_WARNING_SHOWN = True


def math_equal(extracted: str, answer: str) -> bool:
    """math-verify's equivalence of two LaTeX answers (``41`` vs ``41.0``, ``\\frac12`` vs ``0.5``).

    Both sides are wrapped in ``\\boxed{}`` so math-verify parses them as the answer, and run
    without math-verify's own timeout: the caller's limit covers the whole comparison.
    """
    from math_verify import parse, verify

    gold = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
    pred = parse(f"\\boxed{{{extracted}}}", parsing_timeout=None)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))


@dataclass(frozen=True)
class MathVerifier:
    """Mathematical equivalence of the boxed answer and the ground truth (math-verify)."""

    box: BoxChoice = "last"
    """Which ``\\boxed{}`` holds the answer when a response has several."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Wall-clock limit of one check, in seconds."""

    def __post_init__(self):
        _quiet_math_verify_timeout_warning()

    def __call__(self, response: str, answer: str) -> Verdict:
        extracted = extract_boxed(response, self.box)
        if not extracted:
            return Verdict(reward=0.0, extracted=extracted)
        return _timed(lambda: float(math_equal(extracted, answer)), extracted, self.timeout_s, "math")


# ---------------------------------------------------------------------------------------------
# Exact string and multiple choice


@dataclass(frozen=True)
class ExactVerifier:
    """The boxed answer equals the ground truth as a string (both stripped of outer whitespace);
    ``041`` is not ``41``."""

    box: BoxChoice = "last"
    """Which ``\\boxed{}`` holds the answer when a response has several."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Wall-clock limit of one check, in seconds."""

    def __call__(self, response: str, answer: str) -> Verdict:
        extracted = extract_boxed(response, self.box)
        if not extracted:
            return Verdict(reward=0.0, extracted=extracted)
        return _timed(lambda: float(extracted == answer.strip()), extracted, self.timeout_s, "exact")


# ``B``, ``(B)``, ``B)``, ``B.``, ``\text{B}``, ``\textbf{(B)}``, ``\mathrm{B}``.
_CHOICE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\.?$")
_LATEX_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\s*\{(.*)\}$", re.DOTALL)


def choice_letter(text: str) -> str | None:
    """The upper-case option letter ``text`` names, or None if it is not just a letter."""
    text = text.strip()
    while (wrapped := _LATEX_WRAPPER.match(text)) is not None:
        text = wrapped.group(1).strip()
    match = _CHOICE.match(text)
    return match.group(1).upper() if match else None


@dataclass(frozen=True)
class ChoiceVerifier:
    """The option letter in the box (or a response that is only a letter) equals the answer's,
    case-insensitively."""

    box: BoxChoice = "last"
    """Which ``\\boxed{}`` holds the answer when a response has several."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Wall-clock limit of one check, in seconds."""

    def __call__(self, response: str, answer: str) -> Verdict:
        extracted = extract_boxed(response, self.box)
        if extracted is None and choice_letter(response) is not None:
            extracted = response.strip()
        if not extracted:
            return Verdict(reward=0.0, extracted=extracted)

        def check() -> float:
            letter = choice_letter(extracted)
            return float(letter is not None and letter == choice_letter(answer))

        return _timed(check, extracted, self.timeout_s, "choice")


@dataclass(frozen=True)
class CountdownVerifier:
    """The boxed expression reaches the target with the offered numbers, each at most once; the
    answer is the problem's spec (``22 using 3 5 7``; :mod:`megatron_spark.reward.countdown`)."""

    box: BoxChoice = "last"
    """Which ``\\boxed{}`` holds the answer when a response has several."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Wall-clock limit of one check, in seconds (the check is bounded; this is a backstop)."""

    def __call__(self, response: str, answer: str) -> Verdict:
        extracted = extract_boxed(response, self.box)
        if not extracted:
            return Verdict(reward=0.0, extracted=extracted)
        return _timed(lambda: float(check_answer(extracted, answer)), extracted, self.timeout_s, "countdown")


# ---------------------------------------------------------------------------------------------
# User function


def import_function(spec: str) -> Callable[[str, str], float]:
    """The callable named ``package.module:function``; a UserError naming ``spec`` otherwise."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"reward function '{spec}': expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or anything the module raises while importing
        raise UserError(f"reward function '{spec}': cannot import '{module_name}' ({e!r})") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise UserError(f"reward function '{spec}': '{module_name}' has no attribute '{attr}'")
        fn = getattr(fn, part)
    if not callable(fn):
        raise UserError(f"reward function '{spec}': '{attr}' is not callable")
    return fn


@dataclass(frozen=True)
class FunctionVerifier:
    """A user function ``f(response, answer) -> float``; its return value is the reward.

    Exceptions the function raises propagate with their traceback (they are bugs in it); a
    return value that is not a finite number is a UserError.
    """

    spec: str
    """``package.module:function``, importable from the working directory or the environment."""
    box: BoxChoice = "last"
    """Which ``\\boxed{}`` is reported as ``Verdict.extracted`` (the function gets the whole
    response)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Wall-clock limit of one call, in seconds."""
    fn: Callable[[str, str], float] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "fn", import_function(self.spec))

    def _reward(self, response: str, answer: str) -> float:
        value = self.fn(response, answer)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UserError(f"reward function '{self.spec}' returned {value!r}; expected a finite float")
        return float(value)

    def __call__(self, response: str, answer: str) -> Verdict:
        extracted = extract_boxed(response, self.box)
        return _timed(lambda: self._reward(response, answer), extracted, self.timeout_s, self.spec)


# ---------------------------------------------------------------------------------------------


def make_verifier(
    kind: VerifierKind,
    box: BoxChoice = "last",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    function: str | None = None,
) -> Verifier:
    """The verifier of ``kind``; ``function`` (``package.module:function``) only for ``function``."""
    if kind not in VERIFIER_KINDS:
        raise UserError(f"reward kind '{kind}': expected one of {', '.join(VERIFIER_KINDS)}")
    if box not in ("last", "first"):
        raise UserError(f"reward box '{box}': expected 'last' or 'first'")
    if not timeout_s > 0:
        raise UserError(f"reward timeout_s={timeout_s}: expected a positive number of seconds")
    if (kind == "function") != (function is not None):
        raise UserError(
            "reward function: set it (as 'package.module:function') exactly when kind is 'function'"
        )
    if kind == "function":
        return FunctionVerifier(function, box=box, timeout_s=timeout_s)
    cls = {
        "math": MathVerifier,
        "exact": ExactVerifier,
        "choice": ChoiceVerifier,
        "countdown": CountdownVerifier,
    }[kind]
    return cls(box=box, timeout_s=timeout_s)


def verify_batch(verifier: Verifier, responses: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
    """One verdict per (response, answer) pair."""
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
    return [verifier(response, answer) for response, answer in zip(responses, answers)]

"""Wrong answers that are not the policy's: small perturbations of an integer answer.

Used for the warm start's judge and reflection prompts and for held-out judge items, so that a
judge is tested on mistakes it did not make itself (one that only recognises its own typical
errors must not score well).
"""

from __future__ import annotations

import random

OFFSETS = (-11, -10, -9, -2, -1, 1, 2, 9, 10, 11)


def perturb_answer(answer: str, rng: random.Random) -> str | None:
    """A different integer near ``answer`` (``str(int) +- offset``); None if not an integer."""
    try:
        value = int(answer.strip())
    except ValueError:
        return None
    return str(value + rng.choice(OFFSETS))


def wrong_solution(solution: str, answer: str, wrong: str) -> str:
    """``solution`` whose last step result and box say ``wrong`` instead of ``answer``."""
    head, _, _ = solution.rpartition("\\boxed{")
    steps = head.rstrip()
    if steps.endswith(f"={answer}."):
        steps = steps[: -len(answer) - 1] + f"{wrong}."
    return f"{steps} \\boxed{{{wrong}}}".lstrip()


def solution_steps(solution: str) -> str:
    """The worked steps of ``solution`` without its final box."""
    return solution.rpartition("\\boxed{")[0].strip()

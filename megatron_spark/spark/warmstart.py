"""Supervised warm-start examples for the judge and reflection roles.

For a problem with a worked solution: a pointwise or pairwise prompt whose candidates are the
right answer and/or a wrong one: the task's perturbation of the right answer
(:meth:`TaskChecks.perturb`) or, where the task has none (free-form answers that are not integers),
the answer of another problem of the same batch; answered by the
task's worked check (:meth:`TaskChecks.reasoning`; none for free-form answers) and a verdict.
With ``verdicts="correct"`` (the Countdown recipe) the verdict is the one the check implies; with
``verdicts="random"`` (the arithmetic recipe) it is a coin flip, independent of the candidates:
the model learns to check and to box a verdict, but not which verdict is right, and RL on
recycled items must teach that. Reflection prompts show a wrong attempt (the whole worked attempt
where the task can write one, else its final answer) and are answered by the worked solution.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from megatron_spark.data.tasks import Problem
from megatron_spark.spark import templates
from megatron_spark.spark.checks import TaskChecks


def judge_reply(reasoning: str | None, verdict: str) -> str:
    r"""The judge's response: its worked check (if any), then ``\boxed{verdict}``."""
    box = f"\\boxed{{{verdict}}}"
    return f"{reasoning} {box}" if reasoning else box


def warm_start_example(
    problem: Problem,
    kind: str,
    rng: random.Random,
    checks: TaskChecks,
    verdicts: Literal["random", "correct"] = "random",
    distractors: Sequence[str] = (),
    wrong: str | None = None,
) -> tuple[str, str] | None:
    """``(prompt, response)`` of one ``kind`` example, or None when the problem has no worked
    solution or no wrong answer: ``wrong`` (e.g. the model's own), else the task's perturbation,
    else one of ``distractors`` (other problems' answers) that differs from this problem's."""
    if kind not in ("pointwise", "pairwise", "reflection"):
        raise ValueError(f"kind must be pointwise, pairwise or reflection, got {kind!r}")
    if wrong is None:
        wrong = checks.perturb(problem, rng)
    if wrong is None:
        others = [d for d in distractors if d.strip() != problem.right_answer.strip()]
        wrong = rng.choice(others) if others else None
    if wrong is None or not problem.solution:
        return None
    right = problem.right_answer
    if kind == "pointwise":
        vocab = rng.choice(("yesno", "ab"))
        yes, no = templates.POINTWISE_VERDICTS[vocab]
        correct = rng.random() < 0.5
        shown = right if correct else wrong
        truth = correct if verdicts == "correct" else rng.random() < 0.5
        t = rng.randrange(templates.NUM_POINTWISE_TEMPLATES)
        prompt = templates.pointwise_prompt(problem.prompt, shown, vocab, t, checks.styles.judge)
        return prompt, judge_reply(checks.reasoning(problem, [shown]), yes if truth else no)
    if kind == "pairwise":
        right_first = rng.random() < 0.5
        a, b = (right, wrong) if right_first else (wrong, right)
        first = right_first if verdicts == "correct" else rng.random() < 0.5
        t = rng.randrange(templates.NUM_PAIRWISE_TEMPLATES)
        prompt = templates.pairwise_prompt(problem.prompt, a, b, t, checks.styles.judge)
        verdict = templates.PAIRWISE_CHOICES[0 if first else 1]
        return prompt, judge_reply(checks.reasoning(problem, [a, b]), verdict)
    show = rng.choice(("full", "answer"))
    tone = rng.choice(("neutral", "wrong"))
    attempt = checks.attempt(problem, wrong) if show == "full" else None
    if attempt is None:
        show, attempt = "answer", wrong
    t = rng.randrange(templates.NUM_REFLECTION_TEMPLATES)
    prompt = templates.reflection_prompt(problem.prompt, attempt, show, tone, t, checks.styles.reflection)
    return prompt, problem.solution

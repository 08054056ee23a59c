"""Supervised warm-start examples that teach the judge and reflection *formats*, not the skill.

For a problem with a worked solution: a pointwise or pairwise prompt whose candidates are the
right answer and/or a perturbed wrong one, answered by the judge response format (the worked
steps, the judge's own result beside the candidates, then a verdict). With ``verdicts="random"``
(the experiment's setting) the verdict is a coin flip, independent of the candidates: the model
learns to re-derive, to restate the candidates and to box a verdict, but not which verdict is
right; RL on recycled items must teach that. Reflection prompts show a perturbed wrong attempt and
are answered by the worked solution.
"""

from __future__ import annotations

import random
from typing import Literal

from megatron_spark.data.tasks import Problem
from megatron_spark.spark import templates
from megatron_spark.spark.perturb import perturb_answer, solution_steps, wrong_solution


def warm_start_example(
    problem: Problem, kind: str, rng: random.Random, verdicts: Literal["random", "correct"] = "random"
) -> tuple[str, str] | None:
    """``(prompt, response)`` of one ``kind`` example, or None when the problem's answer cannot
    be perturbed (not an integer) or it has no worked solution."""
    wrong = perturb_answer(problem.answer, rng)
    if wrong is None or not problem.solution:
        return None
    steps = solution_steps(problem.solution)
    if kind == "pointwise":
        vocab = rng.choice(("yesno", "ab"))
        yes, no = templates.POINTWISE_VERDICTS[vocab]
        correct = rng.random() < 0.5
        shown = problem.answer if correct else wrong
        truth = correct if verdicts == "correct" else rng.random() < 0.5
        t = rng.randrange(templates.NUM_POINTWISE_TEMPLATES)
        prompt = templates.pointwise_prompt(problem.prompt, shown, vocab, t)
        return prompt, templates.judge_response(steps, problem.answer, [shown], yes if truth else no)
    if kind == "pairwise":
        right_first = rng.random() < 0.5
        a, b = (problem.answer, wrong) if right_first else (wrong, problem.answer)
        first = right_first if verdicts == "correct" else rng.random() < 0.5
        t = rng.randrange(templates.NUM_PAIRWISE_TEMPLATES)
        prompt = templates.pairwise_prompt(problem.prompt, a, b, t)
        verdict = templates.PAIRWISE_CHOICES[0 if first else 1]
        return prompt, templates.judge_response(steps, problem.answer, [a, b], verdict)
    if kind == "reflection":
        show = rng.choice(("full", "answer"))
        tone = rng.choice(("neutral", "wrong"))
        attempt = wrong_solution(problem.solution, problem.answer, wrong) if show == "full" else wrong
        t = rng.randrange(templates.NUM_REFLECTION_TEMPLATES)
        return templates.reflection_prompt(problem.prompt, attempt, show, tone, t), problem.solution
    raise ValueError(f"kind must be pointwise, pairwise or reflection, got {kind!r}")

"""Warm-start examples and the perturbed wrong answers they show: formats right, verdicts as asked."""

import random

import pytest

from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask, Problem
from megatron_spark.spark import templates
from megatron_spark.spark.checks import ArithmeticChecks
from megatron_spark.spark.perturb import OFFSETS, perturb_answer, solution_steps, wrong_solution
from megatron_spark.spark.verdict import parse_verdict
from megatron_spark.spark.warmstart import warm_start_example

TASK = ArithmeticTask(ArithmeticConfig(min_operands=2, max_operands=4, operators="+-*"))
CHECKS = ArithmeticChecks()
SOLUTION = "3+5=8. 8-2=6. \\boxed{6}"


def _wrongs(answer):
    return [str(int(answer) + k) for k in OFFSETS]


@pytest.mark.parametrize("answer", ["6", "0", "-13", " 41 ", "123456789"])
def test_perturb_answer_is_a_different_nearby_integer(answer):
    for seed in range(50):
        wrong = perturb_answer(answer, random.Random(seed))
        assert wrong != answer.strip() and int(wrong) != int(answer)
        assert wrong in _wrongs(answer)


@pytest.mark.parametrize("answer", ["1.5", "x", "", "1/2", "\\frac{1}{2}"])
def test_perturb_answer_of_a_non_integer_is_none(answer):
    assert perturb_answer(answer, random.Random(0)) is None


def test_wrong_solution_changes_the_last_step_and_the_box():
    assert wrong_solution(SOLUTION, "6", "7") == "3+5=8. 8-2=7. \\boxed{7}"
    assert wrong_solution("4*5=20. 3-20=-17. \\boxed{-17}", "-17", "-16") == "4*5=20. 3-20=-16. \\boxed{-16}"


def test_solution_steps_strips_the_box():
    assert solution_steps(SOLUTION) == "3+5=8. 8-2=6."
    assert solution_steps("\\boxed{6}") == ""


def _problems(n=400):
    return [TASK.train_problem(i) for i in range(n)]


def _pointwise_parts(problem, prompt):
    """(shown answer, vocab) of a pointwise warm-start prompt, found by rendering every candidate."""
    found = {
        (shown, vocab)
        for shown in [problem.answer, *_wrongs(problem.answer)]
        for vocab in templates.POINTWISE_VERDICTS
        for t in range(templates.NUM_POINTWISE_TEMPLATES)
        if templates.pointwise_prompt(problem.prompt, shown, vocab, t) == prompt
    }
    assert len(found) == 1, found
    return found.pop()


def _pairwise_parts(problem, prompt):
    """(answer in slot A, answer in slot B) of a pairwise warm-start prompt."""
    candidates = [problem.answer, *_wrongs(problem.answer)]
    found = {
        (a, b)
        for a in candidates
        for b in candidates
        for t in range(templates.NUM_PAIRWISE_TEMPLATES)
        if templates.pairwise_prompt(problem.prompt, a, b, t) == prompt
    }
    assert len(found) == 1, found
    return found.pop()


def _pointwise_agreement(verdicts):
    agree, shown_right = [], 0
    for seed, problem in enumerate(_problems()):
        prompt, response = warm_start_example(problem, "pointwise", random.Random(seed), CHECKS, verdicts)
        shown, vocab = _pointwise_parts(problem, prompt)
        yes, no = templates.POINTWISE_VERDICTS[vocab]
        verdict = parse_verdict(response, (yes, no))
        assert verdict in (yes, no)
        steps = solution_steps(problem.solution)
        assert response == templates.judge_response(steps, problem.answer, [shown], verdict)
        agree.append((verdict == yes) == (shown == problem.answer))
        shown_right += shown == problem.answer
    assert 0.4 <= shown_right / len(agree) <= 0.6  # right and wrong candidates both shown
    return sum(agree) / len(agree)


def _pairwise_agreement(verdicts):
    agree = []
    for seed, problem in enumerate(_problems()):
        prompt, response = warm_start_example(problem, "pairwise", random.Random(seed), CHECKS, verdicts)
        a, b = _pairwise_parts(problem, prompt)
        assert (a == problem.answer) != (b == problem.answer)  # one right, one wrong
        verdict = parse_verdict(response, templates.PAIRWISE_CHOICES)
        assert verdict in templates.PAIRWISE_CHOICES
        steps = solution_steps(problem.solution)
        assert response == templates.judge_response(steps, problem.answer, [a, b], verdict)
        agree.append(verdict == ("A" if a == problem.answer else "B"))
    return sum(agree) / len(agree)


def test_pointwise_random_verdicts_are_independent_of_correctness():
    assert 0.4 <= _pointwise_agreement("random") <= 0.6


def test_pointwise_true_verdicts_always_agree():
    assert _pointwise_agreement("correct") == 1.0


def test_pairwise_random_verdicts_are_independent_of_correctness():
    assert 0.4 <= _pairwise_agreement("random") <= 0.6


def test_pairwise_true_verdicts_always_agree():
    assert _pairwise_agreement("correct") == 1.0


def test_reflection_example_shows_a_wrong_attempt_and_answers_with_the_solution():
    shows = set()
    for seed, problem in enumerate(_problems(100)):
        prompt, response = warm_start_example(problem, "reflection", random.Random(seed), CHECKS)
        assert response == problem.solution
        attempts = {w: "answer" for w in _wrongs(problem.answer)}
        attempts |= {
            wrong_solution(problem.solution, problem.answer, w): "full" for w in _wrongs(problem.answer)
        }
        found = {
            show
            for attempt, show in attempts.items()
            for tone in ("neutral", "wrong")
            for t in range(templates.NUM_REFLECTION_TEMPLATES)
            if templates.reflection_prompt(problem.prompt, attempt, show, tone, t) == prompt
        }
        assert len(found) == 1
        shows |= found
    assert shows == {"full", "answer"}


def test_no_example_without_an_integer_answer_or_a_solution():
    rng = random.Random(0)
    for kind in ("pointwise", "pairwise", "reflection"):
        assert (
            warm_start_example(
                Problem("u", "Compute 1/2.", "0.5", "1/2=0.5. \\boxed{0.5}"), kind, rng, CHECKS
            )
            is None
        )
        assert warm_start_example(Problem("u", "Compute 3+5.", "8", None), kind, rng, CHECKS) is None


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="pointwise, pairwise or reflection"):
        warm_start_example(TASK.train_problem(0), "ranking", random.Random(0), CHECKS)


def test_free_form_answers_take_another_problems_answer_as_the_wrong_candidate():
    from megatron_spark.spark.checks import TaskChecks

    problem = Problem("u", "Simplify 2/4.", "\\frac{1}{2}", "2/4 = \\boxed{\\frac{1}{2}}")
    checks = TaskChecks()
    assert warm_start_example(problem, "pointwise", random.Random(0), checks) is None  # nothing to show
    same = ["\\frac{1}{2}", " \\frac{1}{2} "]
    assert warm_start_example(problem, "pairwise", random.Random(0), checks, distractors=same) is None
    for seed in range(20):
        prompt, response = warm_start_example(
            problem, "pairwise", random.Random(seed), checks, distractors=[*same, "x^2", "7"]
        )
        assert "\\frac{1}{2}" in prompt and ("x^2" in prompt or "7" in prompt)
        assert response in ("\\boxed{A}", "\\boxed{B}")  # free-form: no worked check, the verdict only
        assert prompt.startswith("Problem: Simplify 2/4.") or prompt.startswith(
            "Simplify 2/4."
        )  # question first


def test_own_answers_are_sampled_every_k_steps_from_the_first_and_never_without_candidates():
    from megatron_spark.train.config import SFTSection
    from megatron_spark.train.sft import samples_own_answers

    mix = SFTSection(judge_fraction=0.4, own_wrong_answers_from_step=6, own_wrong_answers_every_steps=3)
    assert [t for t in range(20) if samples_own_answers(mix, t)] == [6, 9, 12, 15, 18]
    every = SFTSection(reflection_fraction=0.1, own_wrong_answers_from_step=2)
    assert [t for t in range(6) if samples_own_answers(every, t)] == [2, 3, 4, 5]
    assert not any(samples_own_answers(SFTSection(judge_fraction=0.4), t) for t in range(50))
    # Nothing shows a candidate: nothing to sample for.
    only_solutions = SFTSection(practice_fraction=0.5, own_wrong_answers_from_step=1)
    assert not any(samples_own_answers(only_solutions, t) for t in range(50))


def test_example_kinds_follow_the_mix_and_its_generator():
    from collections import Counter

    from megatron_spark.train.config import SFTSection
    from megatron_spark.train.sft import example_kinds

    mix = SFTSection(judge_fraction=0.4, reflection_fraction=0.1, practice_fraction=0.25)
    kinds = example_kinds(mix, random.Random(0), 20000)
    share = {k: n / len(kinds) for k, n in Counter(kinds).items()}
    assert abs(share["pointwise"] - 0.2) < 0.015 and abs(share["pairwise"] - 0.2) < 0.015
    assert abs(share["reflection"] - 0.1) < 0.015 and abs(share["practice"] - 0.25) < 0.015
    assert abs(share[None] - 0.25) < 0.015
    assert example_kinds(mix, random.Random(3), 64) == example_kinds(mix, random.Random(3), 64)
    assert set(example_kinds(SFTSection(), random.Random(0), 100)) == {None}

"""Countdown: the bounded expression evaluator, the 0/1 verifier, the seeded generator, and the
judge's worked check and perturbations (spark/checks.py)."""

from __future__ import annotations

import random
import time
from fractions import Fraction

import pytest

from megatron_spark.data.countdown import (
    CountdownConfig,
    CountdownTask,
    random_tree,
    solutions,
    worked_solution,
)
from megatron_spark.errors import UserError
from megatron_spark.reward.countdown import CountdownSpec, check_answer, format_spec, parse_spec
from megatron_spark.reward.expression import (
    ExpressionError,
    format_number,
    negate,
    operands,
    parse,
    render,
    steps,
)
from megatron_spark.reward.verifiers import make_verifier
from megatron_spark.spark.checks import (
    PERTURBATIONS,
    CountdownChecks,
    comparison,
    countdown_check,
    near_miss,
    perturb_countdown,
)

SPEC = "22 using 3 5 7"
VERIFY = make_verifier("countdown")


def reward(box_content: str, answer: str = SPEC) -> float:
    return VERIFY(f"so \\boxed{{{box_content}}}", answer).reward


# --- expression --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("3*5+7", 22),
        ("3+5*7", 38),
        ("(3+5)*7", 56),
        ("8-3-1", 4),
        ("8-(3-1)", 6),
        ("7/2*2", 7),
        ("6/4*4", 6),
        ("  3 \\times 5 + 7 ", 22),
        ("3 \\cdot (5+7)", 36),
        ("12 \\div 4", 3),
        ("3×5÷5", 3),
        ("8 − 3", 5),
        ("\\left(3+5\\right)*7", 56),
        ("{(3+5)}*7", 56),
        ("[3+5]*7", 56),
        ("5x3", 15),
        ("-7+30", 23),
        ("3*-5+22", 7),
        ("-(3-5)", 2),
    ],
)
def test_parse_evaluates_exactly_with_the_usual_precedence(text, value):
    assert parse(text).value == Fraction(value)


def test_division_keeps_fractions_exact():
    assert parse("7/2").value == Fraction(7, 2)
    assert parse("1/3+1/3+1/3").value == 1


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("3+", "ends early"),
        ("(3+5", "ends early"),
        ("3+5)", "unexpected"),
        ("((3+5)", "ends early"),
        ("3/(5-5)", "division by zero"),
        ("3**2", "expected a number"),
        ("3^2", "unexpected character"),
        ("3 5", "unexpected"),
        ("2.5*2", "unexpected character"),
        ("abc", "unexpected character"),
        ("__import__('os')", "unexpected character"),
        ("1" * 13, "more than 12 digits"),
        ("(" * 40 + "1" + ")" * 40, "nested deeper"),
        ("+".join(["1"] * 17), "more than 16 numbers"),
        ("1+" * 200 + "1", "longer than"),
    ],
)
def test_parse_refuses_malformed_text_with_a_reason(text, reason):
    with pytest.raises(ExpressionError, match=reason):
        parse(text)


def test_render_round_trips_and_uses_only_needed_brackets():
    rng = random.Random(0)
    for _ in range(2000):
        numbers = [rng.randint(1, 12) for _ in range(rng.randint(1, 5))]
        tree = random_tree(numbers, "+-*/", rng, left_deep=False)
        if tree is None:
            continue
        if rng.random() < 0.2:
            tree = negate(tree)
        text = render(tree)
        again = parse(text)
        assert again == tree, text  # the same tree, not only the same value
        assert sorted(operands(tree)) == sorted(numbers)
    assert render(parse("(3*5)+7")) == "3*5+7"
    assert render(parse("3-(5-7)")) == "3-(5-7)"
    assert render(parse("(3-5)-7")) == "3-5-7"
    assert render(parse("3/(5*7)")) == "3/(5*7)"
    assert render(parse("-7+30*(18+24)/7")) == "(-7)+30*(18+24)/7"
    assert render(parse("-(3+4)")) == "-(3+4)"


def test_steps_follow_evaluation_order():
    assert [(int(a), op, int(b), int(c)) for a, op, b, c in steps(parse("3+4*5-2"))] == [
        (4, "*", 5, 20),
        (3, "+", 20, 23),
        (23, "-", 2, 21),
    ]


# --- verifier ----------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["3*5+7", "7+5*3", "(5*3)+7", "3*5+7=22", "3 \\times 5 + 7", "7+3*5 = 22"])
def test_right_answers_score_one(good):
    assert reward(good) == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        "3*5+8",  # 8 is not offered
        "5*5-3",  # 5 used twice
        "15+7",  # reaches 22 with a number not offered
        "22",  # the target itself
        "3*5+7=23",  # states a wrong result
        "3*5+7=x",
        "3*5",  # wrong value
        "(3*5+7",  # unbalanced
        "3*5+7)",
        "7/(5-5)+3",  # division by zero
        "3*5++7",
        "",
        "1" * 10_000,  # absurdly long
        "(" * 10_000,
        "3*5+7" + "+0" * 5000,
        "\\frac{44}{2}",
    ],
)
def test_wrong_or_malformed_answers_score_zero_quickly(bad):
    start = time.perf_counter()
    assert reward(bad) == 0.0
    assert time.perf_counter() - start < 0.05


def test_no_box_scores_zero_and_numbers_may_repeat_when_offered_twice():
    assert VERIFY("3*5+7", SPEC).reward == 0.0
    assert reward("5*5-3", "22 using 3 5 5") == 1.0
    assert reward("5*5-3", "22 using 3 5 7") == 0.0
    assert reward("7+7+8", "22 using 7 8 7 1") == 1.0  # a subset is enough


def test_spec_round_trips_and_a_bad_spec_is_a_user_error():
    spec = CountdownSpec(22, (3, 5, 7))
    assert parse_spec(format_spec(spec)) == spec
    for bad in ("22", "using 3 5", "22 using", "x using 1 2"):
        with pytest.raises(UserError, match="TARGET using"):
            parse_spec(bad)


def test_agrees_with_reasoning_gym_on_its_own_problems():
    """reasoning-gym's scorer (sympy) and ours agree on its problems' own answers and on changed
    ones (its rule: every number used, which also satisfies ours)."""
    rg = pytest.importorskip("reasoning_gym")
    ds = rg.create_dataset(
        "countdown",
        min_numbers=3,
        max_numbers=5,
        min_value=1,
        max_value=30,
        min_target=10,
        max_target=300,
        seed=7,
        size=60,
    )
    checked = 0
    for entry in ds:
        meta = entry["metadata"]
        answer = format_spec(CountdownSpec(meta["target"], tuple(meta["numbers"])))
        candidates = [entry["answer"], entry["answer"].replace("+", "-", 1), entry["answer"] + "+1"]
        for cand in candidates:
            theirs = ds.score_answer(cand, entry) == 1.0
            assert check_answer(cand, answer) == theirs, (cand, meta)
            checked += 1
        assert reward(entry["answer"].replace(" ", ""), answer) == 1.0
    assert checked == 180


# --- generator ---------------------------------------------------------------------------------


def test_problems_are_seeded_solvable_and_held_out_disjoint():
    task = CountdownTask(CountdownConfig(held_out_size=100, seed=3))
    again = CountdownTask(CountdownConfig(held_out_size=100, seed=3))
    other = CountdownTask(CountdownConfig(held_out_size=100, seed=4))
    held = {p.prompt for p in task.held_out()}
    assert len(held) == 100
    assert [p.prompt for p in task.held_out()] == [p.prompt for p in again.held_out()]
    assert held != {p.prompt for p in other.held_out()}
    for i in range(500):
        p = task.train_problem(i)
        assert p == again.train_problem(i)
        assert p.prompt not in held
        assert VERIFY(p.solution, p.answer).reward == 1.0
        assert check_answer(p.reference, p.answer)
        spec = parse_spec(p.answer)
        assert 1 <= spec.target <= 99 and spec.target not in spec.numbers
        assert len(spec.numbers) == 3 and all(1 <= n <= 9 for n in spec.numbers)
        assert p.prompt == f"Make {spec.target} from {' '.join(map(str, spec.numbers))}."


def test_difficulty_settings_are_honoured():
    cfg = CountdownConfig(
        min_numbers=4,
        max_numbers=5,
        min_value=10,
        max_value=20,
        operators="+-",
        min_target=30,
        max_target=60,
        held_out_size=10,
    )
    task = CountdownTask(cfg)
    for i in range(200):
        p = task.train_problem(i)
        spec = parse_spec(p.answer)
        assert 4 <= len(spec.numbers) <= 5 and all(10 <= n <= 20 for n in spec.numbers)
        assert 30 <= spec.target <= 60
        assert set(p.reference) <= set("0123456789+-()")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("min_numbers", 1, "min_numbers"),
        ("max_numbers", 2, "max_numbers"),
        ("min_value", 0, "min_value"),
        ("operators", "+^", "operators"),
        ("operators", "", "operators"),
        ("max_target", 0, "max_target"),
        ("held_out_size", -1, "held_out_size"),
    ],
)
def test_bad_settings_are_named(field, value, match):
    with pytest.raises(UserError, match=match):
        CountdownTask(CountdownConfig(**{field: value}))


def test_a_config_without_enough_distinct_problems_is_refused():
    with pytest.raises(UserError, match="distinct held-out problems"):
        CountdownTask(CountdownConfig(min_numbers=2, max_numbers=2, max_value=2, held_out_size=50))


def test_worked_solution_and_left_deep_generation():
    assert worked_solution(parse("3*5+7")) == "3*5+7: 3*5=15. 15+7=22. \\boxed{3*5+7}"
    assert worked_solution(parse("3*5+7"), evaluated=False) == "\\boxed{3*5+7}"
    rng = random.Random(0)
    for _ in range(300):
        tree = random_tree([rng.randint(1, 9) for _ in range(4)], "+-*", rng)
        while not tree.left.is_leaf:  # ((a op b) op c) op d: every right operand is a number
            assert tree.right.is_leaf
            tree = tree.left
        assert tree.right.is_leaf


def test_solutions_are_all_right():
    found = solutions([3, 5, 7], 22)
    assert "3*5+7" in found and len(found) == len(set(found))
    assert all(check_answer(s, SPEC) for s in found)
    assert solutions([1, 1], 50) == []


# --- judge check and perturbations --------------------------------------------------------------


def test_check_of_a_right_answer_ends_equal():
    assert countdown_check("3*5+7", SPEC) == "3*5=15. 15+7=22. 22= 22=: equal."
    assert countdown_check("7+5*3", SPEC) == "5*3=15. 7+15=22. 22= 22=: equal."
    assert countdown_check("(-3)+5*5", "22 using 3 5 5") == "0-3=-3. 5*5=25. -3+25=22. 22= 22=: equal."


def test_check_of_a_wrong_answer_compares_its_value():
    # digit by digit, the value's digit first: 23 against 22 is 2 2 (same), then 3 2 (not)
    assert countdown_check("3*5+8", SPEC) == "3*5=15. 15+8=23. 22= 32!: different."
    assert countdown_check("3*7", SPEC) == "3*7=21. 22= 12!: different."
    assert countdown_check("3*5*7", SPEC) == "3*5=15. 15*7=105. 10! 02! 52!: different."  # 105 vs 022
    assert countdown_check("3-5", SPEC) == "3-5=-2. -2 vs 22: different."  # negative: whole numbers
    assert countdown_check("3*(5+", SPEC) == "It cannot be read."
    assert countdown_check("7/2", "22 using 7 2") == "7/2=7/2. 7/2 vs 22: different."
    assert countdown_check("22", SPEC) == "22= 22=: equal."  # the numbers are the verifier's rule


@pytest.mark.parametrize(
    ("value", "versus", "text"),
    [
        (Fraction(42), "48", "44= 28!: different."),
        (Fraction(48), "48", "44= 88=: equal."),
        (Fraction(6), "7", "67!: different."),
        (Fraction(7), "17", "01! 77=: different."),  # padded to the same width
        (Fraction(0), "0", "00=: equal."),
        (Fraction(-3), "17", "-3 vs 17: different."),
        (Fraction(5), "-5", "5 vs -5: different."),
        (Fraction(7, 2), "4", "7/2 vs 4: different."),
        (Fraction(7, 2), "7/2", "7/2 vs 7/2: equal."),
        (Fraction(7), "07", "00= 77=: equal."),  # by value, as the pairs say
    ],
)
def test_the_comparison_sets_the_digits_side_by_side(value, versus, text):
    assert comparison(value, versus) == text


def test_the_comparison_marks_each_digit_pair_and_says_equal_exactly_for_the_same_number():
    rng = random.Random(2)
    for _ in range(2000):
        value = Fraction(rng.randrange(0, 1200))
        versus = str(rng.choice([value.numerator, rng.randrange(0, 120)]))
        text = comparison(value, versus)
        pairs = text.removesuffix(": equal.").removesuffix(": different.").split()
        width = max(len(str(value.numerator)), len(versus))
        assert [p[:2] for p in pairs] == [
            a + b for a, b in zip(str(value.numerator).zfill(width), versus.zfill(width))
        ]
        assert all(p[2] == ("=" if p[0] == p[1] else "!") for p in pairs)
        assert text.endswith(": equal.") == (str(value.numerator) == versus)


def test_practice_evaluates_the_reference_or_a_perturbation_and_sometimes_compares_its_value():
    task = CountdownTask(CountdownConfig(held_out_size=0))
    checks, rng = CountdownChecks(), random.Random(4)
    kinds, verdicts = set(), []
    for i in range(400):
        p = task.train_problem(i)
        prompt, response = checks.practice(p, rng)
        expr, _, versus = prompt.removeprefix("Compute ").removesuffix(".").partition(" vs ")
        value = parse(expr).value
        assert response.endswith(f"\\boxed{{{format_number(value)}}}")
        work = response.rpartition(" \\boxed")[0]
        target = str(parse_spec(p.answer).target)
        steps = countdown_check(expr, p.answer).removesuffix(comparison(value, target)).rstrip()
        assert work.startswith(steps)  # the check's own evaluation steps
        if versus:
            same = versus == format_number(value)
            assert work == f"{steps} {comparison(value, versus)}".lstrip()
            verdicts.append(same)
        else:
            assert work == steps and not work.endswith(("equal.", "different."))
        kinds.add(check_answer(expr, p.answer))
    assert kinds == {True, False}
    assert 0.15 < sum(verdicts) / 400 < 0.35 and 0.15 < (len(verdicts) - sum(verdicts)) / 400 < 0.35


@pytest.mark.parametrize("compare", [0.0, 1.0])
def test_practice_compares_in_the_share_asked_for(compare):
    """``compare`` 1: every exercise ends with the comparison, half of them with a near miss; 0:
    none does."""
    task = CountdownTask(CountdownConfig(held_out_size=0))
    checks, rng = CountdownChecks(), random.Random(5)
    exercises = [checks.practice(task.train_problem(i), rng, compare) for i in range(200)]
    compared = [prompt for prompt, _ in exercises if " vs " in prompt]
    assert len(compared) == (200 if compare else 0)
    if compare:
        misses = sum(": different." in r for _, r in exercises)
        assert 70 < misses < 130


def test_a_near_miss_is_written_like_the_value_and_never_equals_it():
    rng = random.Random(0)
    for n in [0, 1, 7, 9, 10, 11, 13, 31, 33, 99, 100, 432, -5, -17]:
        misses = {near_miss(Fraction(n), rng) for _ in range(60)}
        assert str(n) not in misses
        assert all(int(m) != n for m in misses)
        assert all(
            len(m.lstrip("-")) in (len(str(abs(n))), len(str(abs(n))) + 1, len(str(abs(n))) - 1)
            for m in misses
        )
    assert near_miss(Fraction(7, 2), rng) in {"3", "4"}
    assert "31" in {near_miss(Fraction(13), rng) for _ in range(200)}  # digits swapped


def test_a_check_ends_equal_exactly_when_the_value_is_the_target():
    task = CountdownTask(CountdownConfig(held_out_size=0))
    rng = random.Random(1)
    checks = CountdownChecks()
    for i in range(300):
        p = task.train_problem(i)
        for cand in (p.right_answer, checks.perturb(p, rng)):
            assert cand is not None
            value_right = parse(cand).value == parse_spec(p.answer).target
            assert countdown_check(cand, p.answer).endswith(": equal.") == value_right
        pair = checks.reasoning(p, ["1+1", p.right_answer])
        assert pair.startswith("B: ") and " A: " in pair


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_every_perturbation_kind_gives_wrong_answers(kind):
    task = CountdownTask(CountdownConfig(held_out_size=0))
    rng = random.Random(2)
    made = 0
    for i in range(200):
        p = task.train_problem(i)
        cand = perturb_countdown(p, rng, kinds=(kind,))
        if cand is None:
            continue
        made += 1
        assert not check_answer(cand, p.answer)
        parse(cand)  # a well-formed expression
    assert made >= 100


def test_fold_perturbations_reach_the_target_with_a_number_not_offered():
    task = CountdownTask(CountdownConfig(held_out_size=0))
    rng = random.Random(3)
    hits = 0
    for i in range(100):
        p = task.train_problem(i)
        cand = perturb_countdown(p, rng, kinds=("fold",))
        if cand is not None and parse(cand).value == parse_spec(p.answer).target:
            hits += 1
            assert not check_answer(cand, p.answer)  # the verifier refuses what the check passes
    assert hits >= 50


def test_vote_key_is_the_value_of_a_legal_expression():
    checks = CountdownChecks()
    p = CountdownTask(CountdownConfig(held_out_size=0)).train_problem(0)
    right = p.right_answer
    assert checks.vote_key(p, right) == parse_spec(p.answer).target
    assert checks.vote_key(p, "99*99") is None
    assert checks.vote_key(p, "(((") is None

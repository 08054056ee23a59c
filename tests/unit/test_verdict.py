"""Judge verdict parsing: boxed, case-insensitive, decoration-tolerant, and void when ambiguous."""

import random

import pytest

from megatron_spark.spark.verdict import check_matches, judge_reward, parse_verdict, verdict_reward

YESNO = ("Yes", "No")
AB = ("A", "B")


@pytest.mark.parametrize(
    "text,choices,verdict",
    [
        ("\\boxed{Yes}", YESNO, "Yes"),
        ("\\boxed{ yes }", YESNO, "Yes"),
        ("\\boxed{NO}", YESNO, "No"),
        ("\\boxed{(A)}", AB, "A"),
        ("\\boxed{[b]}", AB, "B"),
        ("\\boxed{\\text{B}}", AB, "B"),
        ("\\boxed{\\textbf{(b)}}", AB, "B"),
        ("\\boxed{\\mathrm{A}}", AB, "A"),
        ("\\boxed{\\mathbf {A}}", AB, "A"),
        ("\\boxed{A.}", AB, "A"),
        ("\\boxed{A)}", AB, "A"),
        ("\\boxed{'Yes'!}", YESNO, "Yes"),
        ("\\boxed{**No**}", YESNO, "No"),
        ("\\boxed{**\\text{No}**}", YESNO, "No"),  # unwrap and strip until nothing changes
        ("\\boxed{\\text{(A)}.}", AB, "A"),
        ("\\boxed{{B}}", AB, "B"),
        ("\\boxed{\\boxed{A}}", AB, "A"),  # a nested box spanning the whole content
        ("\\boxed{Yes} ... \\boxed{yes}", YESNO, "Yes"),  # boxes that agree
        ("Mine: 6. Given: 7. The answer is Yes. \\boxed{No}", YESNO, "No"),  # outside text ignored
        ("\\fbox{B}", AB, "B"),
    ],
)
def test_parses(text, choices, verdict):
    assert parse_verdict(text, choices) == verdict


@pytest.mark.parametrize(
    "text,choices",
    [
        ("Yes", YESNO),  # no box
        ("The answer is A", AB),
        ("\\boxed{Yes or No}", YESNO),
        ("\\boxed{A/B}", AB),
        ("\\boxed{not A}", AB),
        ("\\boxed{}", AB),
        ("\\boxed{ ** }", AB),
        ("\\boxed{AB}", AB),
        ("\\boxed{C}", AB),
        ("\\boxed{Yes} and \\boxed{No}", YESNO),  # boxes that disagree
        ("\\boxed{A} \\boxed{(a)} \\boxed{B}", AB),
        ("\\boxed{Yes} \\boxed{maybe}", YESNO),  # one box names no choice
        ("\\boxed{A \\boxed{B}}", AB),  # the nested box does not span the content
        ("\\boxed{\\text{A} B}", AB),
        ("\\boxed{Yes", YESNO),  # unclosed
        ("\\box{Yes}", YESNO),  # not a box the reward reads
    ],
)
def test_rejects(text, choices):
    assert parse_verdict(text, choices) is None


def test_returns_the_choice_as_spelled():
    assert parse_verdict("\\boxed{YES}", ["yes", "no"]) == "yes"
    assert parse_verdict("\\boxed{correct}", ["Correct", "Incorrect"]) == "Correct"


def test_choices_must_be_distinct_and_nonempty():
    with pytest.raises(ValueError, match="distinct"):
        parse_verdict("\\boxed{A}", ["A", "a"])
    with pytest.raises(ValueError, match="distinct"):
        parse_verdict("\\boxed{A}", ["A", "A"])
    with pytest.raises(ValueError, match="non-empty"):
        parse_verdict("\\boxed{}", ["", "B"])


def test_verdict_reward():
    assert verdict_reward("so \\boxed{(a)}", "A", AB) == 1.0
    assert verdict_reward("so \\boxed{(a)}", "B", AB) == 0.0
    assert verdict_reward("\\boxed{A} \\boxed{B}", "A", AB) == 0.0
    assert verdict_reward("A", "A", AB) == 0.0
    assert verdict_reward("\\boxed{no}", "No", YESNO) == 1.0
    with pytest.raises(ValueError, match="not one of the choices"):
        verdict_reward("\\boxed{Yes}", "yes", YESNO)  # a label spelled unlike its choice


def test_fuzz_never_raises_and_returns_a_choice_or_none():
    pieces = [
        "\\boxed{",
        "\\text{",
        "{",
        "}",
        "\\",
        "\\{",
        "A",
        "a",
        "B",
        "Yes",
        "no",
        " ",
        "(",
        ")",
        "*",
        ".",
    ]
    rng = random.Random(0)
    seen = set()
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for choices in (AB, YESNO):
            verdict = parse_verdict(text, choices)
            assert verdict is None or verdict in choices
            seen.add(verdict)
    assert {None, "A", "B", "Yes", "No"} <= seen  # the fuzz reaches real verdicts too


CHECK = "3*5=15. 15+7=22. 22 vs 22: equal."


@pytest.mark.parametrize(
    "text,matches",
    [
        (f"{CHECK} \\boxed{{Yes}}", True),
        ("  3*5=15.\n15+7=22.   22 vs 22: equal.\\boxed{No}", True),  # whitespace folded
        (f"{CHECK}", False),  # no box
        ("3*5=15. 15+7=21. 21 vs 22: different. \\boxed{No}", False),  # a wrong step
        (f"{CHECK} 22 vs 22: equal. \\boxed{{Yes}}", False),  # extra text before the box
        ("\\boxed{Yes}", False),  # no check at all
        (f"{CHECK} \\boxed{{x}} more \\boxed{{Yes}}", False),  # the last box counts
        ("", False),
    ],
)
def test_check_matches(text, matches):
    assert check_matches(text, CHECK) is matches


def test_empty_check_never_matches():
    assert not check_matches("\\boxed{Yes}", "") and not check_matches(" \\boxed{Yes}", "   ")


def test_judge_reward_needs_the_check_only_when_given():
    right = f"{CHECK} \\boxed{{Yes}}"
    wrong_check = "3*5=15. 15+7=23. 23 vs 22: equal. \\boxed{Yes}"
    assert judge_reward(right, "Yes", YESNO, CHECK) == 1.0
    assert judge_reward(right, "No", YESNO, CHECK) == 0.0  # right check, wrong verdict
    assert judge_reward(wrong_check, "Yes", YESNO, CHECK) == 0.0  # right verdict after a wrong check
    assert judge_reward(wrong_check, "Yes", YESNO) == 1.0  # no check asked: the verdict alone
    with pytest.raises(ValueError, match="not one of the choices"):
        judge_reward(right, "Maybe", YESNO, CHECK)

r"""Prompt templates for recycled items: pointwise and pairwise judging, and reflection.

SPARK draws each recycled prompt from a pool of differently worded templates so that the judge
learns the task rather than one phrasing. Pointwise items come in two verdict vocabularies,
Yes/No and A/B (A = correct, B = incorrect); pairwise verdicts are the letter of the correct
response. Every template says which words to use and asks for the verdict (or, for reflection,
the final answer) in ``\boxed{}``, the only form the reward reads. The question and answers are
inserted verbatim.

The templates are short and use plain words: the tiny test model has about a million parameters
and a 512-piece tokenizer trained on the sentences in ``tools/train_tokenizer.py``. Every template
ends with the question, so that a response starts right after the question exactly as a policy
response does: with rotary (relative) positions, the judge's re-derivation and the reflection's
new solution see the operands at the same offsets as the policy's solution and reuse its skill.
(With the question first, a tiny model's derivations inside judge prompts were far worse than
its policy answers: measured, see docs/experiments/tiny_arith.md.)

``judge_response`` writes the judge's *response* for the supervised warm start on the tiny
arithmetic task: the judge re-derives the answer, then checks each candidate with one more step of
the same arithmetic, its own result minus the candidate (``6-7=-1.``), then the verdict. The
candidate is right exactly when that step gives 0. The check reuses the skill the policy trains
on every step (``a-b=c.``, operands just before the result), where a comparison of two numbers
written apart (``Mine: 6. Given: 7.``) was not learnt by a tiny model even when supervised
(docs/experiments/tiny_arith.md). A pairwise reply checks slot B first and slot A last, so that
every A/B verdict follows one rule, the last check's result: 0 means A (pointwise: A = correct),
anything else B; and Yes/No: 0 means Yes. The arithmetic recipe's warm start does not teach which
verdict a check implies (its verdicts are coin flips): it is learnt on recycled items, from their
reward and from verdict cross-entropy (``spark.judge_ce_weight``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Vocab = Literal["yesno", "ab"]
Show = Literal["full", "answer"]
Tone = Literal["neutral", "wrong"]

POINTWISE_VERDICTS: dict[str, tuple[str, str]] = {"yesno": ("Yes", "No"), "ab": ("A", "B")}
"""Pointwise verdict words per vocabulary: (correct, incorrect)."""
PAIRWISE_CHOICES = ("A", "B")
"""Pairwise verdict words: the slot of the correct response."""

Style = Literal["question_last", "question_first"]
"""Where the question goes. ``question_last`` (the tiny arithmetic task): the response starts
right after the question, as a policy response does. ``question_first``: the question, then the
instruction, then the answer(s) or attempt under judgement, so a judge's check starts right after
what it checks (Countdown) and a real model reads the problem before the task (free-form math)."""


@dataclass(frozen=True)
class Styles:
    """The style of a task's judge prompts and of its reflection prompts."""

    judge: Style = "question_last"
    reflection: Style = "question_last"


QUESTION_LAST = Styles()
"""Both kinds with the question last (the arithmetic task's, and the default)."""


# Placeholders: {question}, {answer}. The raw strings keep ``\boxed{{}}`` as ``\boxed{}``.
# Every template ends with the question (see the module docstring).
_POINTWISE_LAST: dict[str, tuple[str, ...]] = {
    "yesno": (
        r"Answer: {answer} Is this answer correct? Answer Yes or No in \boxed{{}}. Problem: {question}",
        r"Candidate answer: {answer} Is it right? Write Yes or No in \boxed{{}}. {question}",
        r"Check the answer {answer}. Put Yes if correct, No if wrong, in \boxed{{}}. Problem: {question}",
        r"The final answer is {answer}. Does it reach the right answer? Yes or No in \boxed{{}}. Problem: {question}",
        r"Judge whether {answer} is the correct answer. Reply with Yes or No in \boxed{{}}. {question}",
        r"Here is a problem and a candidate answer: {answer} Give your verdict, Yes or No, in \boxed{{}}. {question}",
        r"Is the answer {answer} correct? Verdict in \boxed{{}}: Yes or No. Problem: {question}",
        r"Is this solution right? Answer: {answer} Reply with Yes or No in \boxed{{}}. Problem: {question}",
    ),
    "ab": (
        r"Answer: {answer} Is this answer correct? Write A if correct, B if wrong, in \boxed{{}}. Problem: {question}",
        r"Candidate answer: {answer} Verdict in \boxed{{}}: A = correct, B = wrong. {question}",
        r"Check the answer {answer}. Choose (A) correct or (B) wrong. Put the letter in \boxed{{}}. Problem: {question}",
        r"The final answer is {answer}. Put A in \boxed{{}} if it is correct and B if it is wrong. Problem: {question}",
        r"Judge whether {answer} is the correct answer. A means correct, B means wrong. Reply in \boxed{{}}. {question}",
        r"Here is a problem and a candidate answer: {answer} Verdict, A (correct) or B (wrong), in \boxed{{}}. {question}",
        r"Is the answer {answer} correct? \boxed{{}} with A for correct, B for wrong. Problem: {question}",
        r"Is this solution right? Answer: {answer} A: it is correct. B: it is wrong. Put A or B in \boxed{{}}. {question}",
    ),
}

# Placeholders: {question}, {answer_a}, {answer_b}.
_PAIRWISE_LAST: tuple[str, ...] = (
    r"Response A: {answer_a} Response B: {answer_b} Which response is correct, A or B? Put it in \boxed{{}}. Problem: {question}",
    r"Here is a problem and two candidate answers. A: {answer_a} B: {answer_b} Write the right one, A or B, in \boxed{{}}. {question}",
    r"Compare the two answers and pick the correct one. (A) {answer_a} (B) {answer_b} Verdict in \boxed{{}}: A or B. Problem: {question}",
    r"Candidate A: {answer_a} Candidate B: {answer_b} Which candidate is better? Reply with A or B in \boxed{{}}. {question}",
    r"Answer A: {answer_a} Answer B: {answer_b} Which answer is right? Give your verdict, A or B, in \boxed{{}}. Problem: {question}",
    r"Which response is better, A or B? A: {answer_a} B: {answer_b} Put the letter in \boxed{{}}. Problem: {question}",
    r"Two answers: A: {answer_a} B: {answer_b} One is correct. Write its letter, A or B, in \boxed{{}}. {question}",
    r"Judge two answers. First (A): {answer_a} Second (B): {answer_b} Put A or B, the correct one, in \boxed{{}}. {question}",
)

# Placeholders: {question}, {attempt} (the whole previous response for "full", only its final
# answer for "answer").
_REFLECTION_LAST: dict[tuple[str, str], tuple[str, ...]] = {
    ("full", "neutral"): (
        r"Response: {attempt} Check each step of the response. Confirm or fix it. Put the final answer in \boxed{{}}. Problem: {question}",
        r"A previous attempt: {attempt} Review the solution. If it is right keep it, if not fix it. Final answer in \boxed{{}}. {question}",
        r"Attempt: {attempt} Check the work step by step. Confirm or fix it. Final answer in \boxed{{}}. Problem: {question}",
        r"Read the response, then check it. Response: {attempt} Confirm or fix its final answer in \boxed{{}}. Problem: {question}",
    ),
    ("full", "wrong"): (
        r"Response: {attempt} The response is wrong. Find the mistake and solve again. Put the final answer in \boxed{{}}. Problem: {question}",
        r"A previous attempt: {attempt} This attempt has an error. Correct the mistake and put the new answer in \boxed{{}}. {question}",
        r"Wrong solution: {attempt} Solve the problem again from the start. Put the final answer in \boxed{{}}. Problem: {question}",
        r"The previous response has an error. Response: {attempt} Try again. Final answer in \boxed{{}}. Problem: {question}",
    ),
    ("answer", "neutral"): (
        r"Your previous answer: {attempt} Check it. If it is right keep it, if not fix it. Put the final answer in \boxed{{}}. Problem: {question}",
        r"A previous answer was {attempt}. Solve it again to confirm or correct it. Put the final answer in \boxed{{}}. {question}",
        r"Proposed answer: {attempt} Check it, then confirm or fix it. Final answer in \boxed{{}}. Problem: {question}",
        r"Here is an answer to check: {attempt} Confirm or correct it. Final answer in \boxed{{}}. Problem: {question}",
    ),
    ("answer", "wrong"): (
        r"Your previous answer was {attempt}. It is wrong. Try again. Put the final answer in \boxed{{}}. Problem: {question}",
        r"The answer {attempt} is wrong. Solve the problem again from the start. Final answer in \boxed{{}}. {question}",
        r"Wrong answer: {attempt} The correct answer is different. Put the final answer in \boxed{{}}. Problem: {question}",
        r"Your previous answer to this problem was wrong. Wrong answer: {attempt} Try again. Final answer in \boxed{{}}. {question}",
    ),
}

# The same pools with the question first and what is judged (or the attempt) last.
_POINTWISE_FIRST: dict[str, tuple[str, ...]] = {
    "yesno": (
        r"Problem: {question} Is the answer below correct? Reply Yes or No in \boxed{{}}. Answer: {answer}",
        r"{question} Check this answer. Write Yes if it is right, No if it is wrong, in \boxed{{}}. Answer: {answer}",
        r"Problem: {question} Judge the candidate answer. Verdict in \boxed{{}}: Yes or No. Candidate: {answer}",
        r"Problem: {question} Does this answer solve the problem? Put Yes or No in \boxed{{}}. Answer: {answer}",
        r"{question} Here is an answer to check. Give your verdict, Yes or No, in \boxed{{}}. Answer: {answer}",
        r"Problem: {question} Decide whether the answer is correct. Reply Yes or No in \boxed{{}}. Proposed answer: {answer}",
        r"Problem: {question} Is this final answer right? Write Yes or No in \boxed{{}}. Final answer: {answer}",
        r"{question} Verify the answer below. Yes in \boxed{{}} if it is correct, No if not. Answer: {answer}",
    ),
    "ab": (
        r"Problem: {question} Is the answer below correct? Write A if correct, B if wrong, in \boxed{{}}. Answer: {answer}",
        r"{question} Check this answer. Verdict in \boxed{{}}: A = correct, B = wrong. Answer: {answer}",
        r"Problem: {question} Judge the candidate answer. Choose (A) correct or (B) wrong, in \boxed{{}}. Candidate: {answer}",
        r"Problem: {question} Put A in \boxed{{}} if this answer solves the problem and B if it does not. Answer: {answer}",
        r"{question} Here is an answer to check. Verdict, A (correct) or B (wrong), in \boxed{{}}. Answer: {answer}",
        r"Problem: {question} Decide whether the answer is correct. A means correct, B means wrong. Reply in \boxed{{}}. Proposed answer: {answer}",
        r"Problem: {question} Is this final answer right? \boxed{{}} with A for correct, B for wrong. Final answer: {answer}",
        r"{question} Verify the answer below. A: it is correct. B: it is wrong. Put A or B in \boxed{{}}. Answer: {answer}",
    ),
}
_PAIRWISE_FIRST: tuple[str, ...] = (
    r"Problem: {question} Which answer is correct, A or B? Put the letter in \boxed{{}}. A: {answer_a} B: {answer_b}",
    r"{question} Two candidate answers follow. Write the right one, A or B, in \boxed{{}}. A: {answer_a} B: {answer_b}",
    r"Problem: {question} Compare the two answers and pick the correct one. Verdict in \boxed{{}}: A or B. (A) {answer_a} (B) {answer_b}",
    r"Problem: {question} Which candidate is better? Reply with A or B in \boxed{{}}. Candidate A: {answer_a} Candidate B: {answer_b}",
    r"{question} One of two answers is right. Give its letter, A or B, in \boxed{{}}. Answer A: {answer_a} Answer B: {answer_b}",
    r"Problem: {question} Which response is better, A or B? Put the letter in \boxed{{}}. A: {answer_a} B: {answer_b}",
    r"Problem: {question} Judge two answers and put A or B, the correct one, in \boxed{{}}. First (A): {answer_a} Second (B): {answer_b}",
    r"{question} Pick the correct answer. Write A or B in \boxed{{}}. Response A: {answer_a} Response B: {answer_b}",
)
_REFLECTION_FIRST: dict[tuple[str, str], tuple[str, ...]] = {
    ("full", "neutral"): (
        r"Problem: {question} Check each step of the response below. Confirm or fix it. Put the final answer in \boxed{{}}. Response: {attempt}",
        r"{question} Review a previous attempt. If it is right keep it, if not fix it. Final answer in \boxed{{}}. Attempt: {attempt}",
        r"Problem: {question} Check the work step by step, then confirm or fix it. Final answer in \boxed{{}}. Attempt: {attempt}",
        r"Problem: {question} Read the response, then check it. Confirm or fix its final answer in \boxed{{}}. Response: {attempt}",
    ),
    ("full", "wrong"): (
        r"Problem: {question} The response below is wrong. Find the mistake and solve again. Put the final answer in \boxed{{}}. Response: {attempt}",
        r"{question} This attempt has an error. Correct the mistake and put the new answer in \boxed{{}}. Attempt: {attempt}",
        r"Problem: {question} Solve the problem again from the start; this solution is wrong. Final answer in \boxed{{}}. Wrong solution: {attempt}",
        r"Problem: {question} The previous response has an error. Try again. Final answer in \boxed{{}}. Response: {attempt}",
    ),
    ("answer", "neutral"): (
        r"Problem: {question} Check your previous answer. If it is right keep it, if not fix it. Put the final answer in \boxed{{}}. Previous answer: {attempt}",
        r"{question} Solve it again to confirm or correct a previous answer. Put the final answer in \boxed{{}}. Previous answer: {attempt}",
        r"Problem: {question} Check the proposed answer, then confirm or fix it. Final answer in \boxed{{}}. Proposed answer: {attempt}",
        r"Problem: {question} Confirm or correct this answer. Final answer in \boxed{{}}. Answer to check: {attempt}",
    ),
    ("answer", "wrong"): (
        r"Problem: {question} Your previous answer is wrong. Try again. Put the final answer in \boxed{{}}. Wrong answer: {attempt}",
        r"{question} This answer is wrong. Solve the problem again from the start. Final answer in \boxed{{}}. Wrong answer: {attempt}",
        r"Problem: {question} The correct answer is different from this one. Put the final answer in \boxed{{}}. Wrong answer: {attempt}",
        r"Problem: {question} Your previous answer to this problem was wrong. Try again. Final answer in \boxed{{}}. Wrong answer: {attempt}",
    ),
}

_POINTWISE = {"question_last": _POINTWISE_LAST, "question_first": _POINTWISE_FIRST}
_PAIRWISE = {"question_last": _PAIRWISE_LAST, "question_first": _PAIRWISE_FIRST}
_REFLECTION = {"question_last": _REFLECTION_LAST, "question_first": _REFLECTION_FIRST}
STYLES: tuple[str, ...] = tuple(_POINTWISE)

NUM_POINTWISE_TEMPLATES = len(_POINTWISE_LAST["yesno"])
"""Pointwise templates per verdict vocabulary (and style)."""
NUM_PAIRWISE_TEMPLATES = len(_PAIRWISE_LAST)
"""Pairwise templates per style."""
NUM_REFLECTION_TEMPLATES = len(_REFLECTION_LAST["full", "neutral"])
"""Reflection templates per (show, tone) combination (and style)."""

assert all(len(t) == NUM_POINTWISE_TEMPLATES for pools in _POINTWISE.values() for t in pools.values())
assert all(len(t) == NUM_PAIRWISE_TEMPLATES for t in _PAIRWISE.values())
assert all(len(t) == NUM_REFLECTION_TEMPLATES for pools in _REFLECTION.values() for t in pools.values())


def _pick(pool: Sequence[str], template: int, kind: str) -> str:
    if not 0 <= template < len(pool):
        raise ValueError(f"{kind} template index {template} is out of range 0..{len(pool) - 1}")
    return pool[template]


def _style(style: str) -> str:
    if style not in _POINTWISE:
        raise ValueError(f"template style must be one of {', '.join(STYLES)}, got {style!r}")
    return style


def pointwise_prompt(
    question: str, answer: str, vocab: Vocab, template: int, style: Style = "question_last"
) -> str:
    """Ask whether ``answer`` is a correct final answer to ``question``.

    The verdict is ``POINTWISE_VERDICTS[vocab]``: (correct, incorrect), boxed.
    """
    pools = _POINTWISE[_style(style)]
    if vocab not in pools:
        raise ValueError(f"pointwise vocab must be one of {sorted(pools)}, got {vocab!r}")
    text = _pick(pools[vocab], template, "pointwise")
    return text.format(question=question, answer=answer)


def pairwise_prompt(
    question: str, answer_a: str, answer_b: str, template: int, style: Style = "question_last"
) -> str:
    """Ask which of two final answers to ``question`` is correct; the verdict is ``A`` or ``B``, boxed."""
    text = _pick(_PAIRWISE[_style(style)], template, "pairwise")
    return text.format(question=question, answer_a=answer_a, answer_b=answer_b)


def reflection_prompt(
    question: str, attempt: str, show: Show, tone: Tone, template: int, style: Style = "question_last"
) -> str:
    """Ask for a fresh, boxed final answer to ``question`` given a previous attempt.

    ``show="full"``: ``attempt`` is the whole previous response; ``"answer"``: only its final
    answer. ``tone="wrong"`` says the attempt is wrong; ``"neutral"`` asks to check it and
    confirm or fix it.
    """
    pools = _REFLECTION[_style(style)]
    if (show, tone) not in pools:
        raise ValueError(
            f"reflection show/tone must be full|answer and neutral|wrong, got {show!r}, {tone!r}"
        )
    text = _pick(pools[show, tone], template, "reflection")
    return text.format(question=question, attempt=attempt)


def check_step(own: int, shown: int) -> str:
    """``own`` minus ``shown`` as one arithmetic step; a negative candidate is added back, so the
    step keeps the task's form (a non-negative right operand): ``check_step(6, -7) == "6+7=13."``."""
    return f"{own}{'-' if shown >= 0 else '+'}{abs(shown)}={own - shown}."


def judge_response(steps: str, own: str, shown: Sequence[str], verdict: str) -> str:
    r"""A judge response for the tiny-task warm start: re-derivation, a check step per candidate,
    verdict.

    ``steps`` is the worked solution without its final box, ``own`` its (integer) result,
    ``shown`` the one (pointwise) or two (pairwise, slots A and B) integer candidates from the
    prompt::

        judge_response("3+5-2=6.", "6", ["7"], "No") == "3+5-2=6. 6-7=-1. \boxed{No}"
        judge_response("3+5-2=6.", "6", ["-7", "6"], "B")
        == "3+5-2=6. B: 6-6=0. A: 6+7=13. \boxed{B}"
    """
    if len(shown) not in (1, 2):
        raise ValueError(f"judge_response shows one or two answers, got {len(shown)}")
    try:
        mine, given = int(own), [int(s) for s in shown]
    except ValueError:
        raise ValueError(f"judge_response checks integer answers, got {own!r} and {list(shown)!r}") from None
    checks = [check_step(mine, s) for s in given]
    if len(checks) == 2:  # B first: the last check decides every A/B verdict alike
        checks = [f"B: {checks[1]}", f"A: {checks[0]}"]
    return f"{steps} {' '.join(checks)} \\boxed{{{verdict}}}"

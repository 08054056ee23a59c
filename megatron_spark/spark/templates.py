r"""Prompt templates for recycled items: pointwise and pairwise judging, and reflection.

SPARK draws each recycled prompt from a pool of differently worded templates so that the judge
learns the task rather than one phrasing. Pointwise items come in two verdict vocabularies,
Yes/No and A/B (A = correct, B = incorrect); pairwise verdicts are the letter of the correct
response. Every template says which words to use and asks for the verdict (or, for reflection,
the final answer) in ``\boxed{}``, the only form the reward reads. The question and answers are
inserted verbatim.

The templates are short and use plain words: the tiny test model has about a million parameters
and a 512-piece tokenizer trained on the sentences in ``tools/train_tokenizer.py``.

``judge_response`` writes the judge's *response* for the supervised warm start on the tiny
arithmetic task: the judge re-derives the answer, then writes its own result next to each
candidate (``Mine: 6. Given: 7.``), then the verdict. Putting the two results side by side makes
the comparison a local one that a tiny model can make; the verdict itself is then learnt by RL
through its reward only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Vocab = Literal["yesno", "ab"]
Show = Literal["full", "answer"]
Tone = Literal["neutral", "wrong"]

POINTWISE_VERDICTS: dict[str, tuple[str, str]] = {"yesno": ("Yes", "No"), "ab": ("A", "B")}
"""Pointwise verdict words per vocabulary: (correct, incorrect)."""
PAIRWISE_CHOICES = ("A", "B")
"""Pairwise verdict words: the slot of the correct response."""

# Placeholders: {question}, {answer}. The raw strings keep ``\boxed{{}}`` as ``\boxed{}``.
_POINTWISE: dict[str, tuple[str, ...]] = {
    "yesno": (
        r"Problem: {question} Answer: {answer} Is this answer correct? Answer Yes or No in \boxed{{}}.",
        r"{question} Candidate answer: {answer} Is it right? Write Yes or No in \boxed{{}}.",
        r"Check the answer. Problem: {question} Answer: {answer} Put Yes if correct, No if wrong, in \boxed{{}}.",
        r"Problem: {question} The final answer is {answer}. Does it reach the right answer? Yes or No in \boxed{{}}.",
        r"Judge whether {answer} is the correct answer to: {question} Reply with Yes or No in \boxed{{}}.",
        r"Here is a problem and a candidate answer. {question} Answer: {answer} Give your verdict, Yes or No, in \boxed{{}}.",
        r"Answer: {answer} Problem: {question} Is the answer correct? Verdict in \boxed{{}}: Yes or No.",
        r"Is this solution right? Problem: {question} Answer: {answer} Reply with Yes or No in \boxed{{}}.",
    ),
    "ab": (
        r"Problem: {question} Answer: {answer} Is this answer correct? Write A if correct, B if wrong, in \boxed{{}}.",
        r"{question} Candidate answer: {answer} Verdict in \boxed{{}}: A = correct, B = wrong.",
        r"Check the answer. Problem: {question} Answer: {answer} Choose (A) correct or (B) wrong. Put the letter in \boxed{{}}.",
        r"Problem: {question} The final answer is {answer}. Put A in \boxed{{}} if it is correct and B if it is wrong.",
        r"Judge whether {answer} is the correct answer to: {question} A means correct, B means wrong. Reply in \boxed{{}}.",
        r"Here is a problem and a candidate answer. {question} Answer: {answer} Verdict, A (correct) or B (wrong), in \boxed{{}}.",
        r"Answer: {answer} Problem: {question} Is the answer correct? \boxed{{}} with A for correct, B for wrong.",
        r"Is this solution right? Problem: {question} Answer: {answer} A: it is correct. B: it is wrong. Put A or B in \boxed{{}}.",
    ),
}

# Placeholders: {question}, {answer_a}, {answer_b}.
_PAIRWISE: tuple[str, ...] = (
    r"Problem: {question} Response A: {answer_a} Response B: {answer_b} Which response is correct, A or B? Put it in \boxed{{}}.",
    r"Here is a problem and two candidate answers. {question} A: {answer_a} B: {answer_b} Write the right one, A or B, in \boxed{{}}.",
    r"Compare the two answers and pick the correct one. Problem: {question} (A) {answer_a} (B) {answer_b} Verdict in \boxed{{}}: A or B.",
    r"{question} Candidate A: {answer_a} Candidate B: {answer_b} Which candidate is better? Reply with A or B in \boxed{{}}.",
    r"Problem: {question} Answer A: {answer_a} Answer B: {answer_b} Which answer is right? Give your verdict, A or B, in \boxed{{}}.",
    r"Which response is better, A or B? Problem: {question} A: {answer_a} B: {answer_b} Put the letter in \boxed{{}}.",
    r"Two answers to: {question} A: {answer_a} B: {answer_b} One is correct. Write its letter, A or B, in \boxed{{}}.",
    r"Judge two answers. Problem: {question} First (A): {answer_a} Second (B): {answer_b} Put A or B, the correct one, in \boxed{{}}.",
)

# Placeholders: {question}, {attempt} (the whole previous response for "full", only its final
# answer for "answer").
_REFLECTION: dict[tuple[str, str], tuple[str, ...]] = {
    ("full", "neutral"): (
        r"Problem: {question} Response: {attempt} Check each step of the response. Confirm or fix it. Put the final answer in \boxed{{}}.",
        r"{question} A previous attempt: {attempt} Review the solution. If it is right keep it, if not fix it. Final answer in \boxed{{}}.",
        r"Problem: {question} Attempt: {attempt} Check the work step by step. Confirm or fix it. Final answer in \boxed{{}}.",
        r"Read the problem and the response, then check it. Problem: {question} Response: {attempt} Confirm or fix its final answer in \boxed{{}}.",
    ),
    ("full", "wrong"): (
        r"Problem: {question} Response: {attempt} The response is wrong. Find the mistake and solve again. Put the final answer in \boxed{{}}.",
        r"{question} A previous attempt: {attempt} This attempt has an error. Correct the mistake and put the new answer in \boxed{{}}.",
        r"Problem: {question} Wrong solution: {attempt} Solve the problem again from the start. Put the final answer in \boxed{{}}.",
        r"The previous response has an error. Problem: {question} Response: {attempt} Try again. Final answer in \boxed{{}}.",
    ),
    ("answer", "neutral"): (
        r"Problem: {question} Your previous answer: {attempt} Check it. If it is right keep it, if not fix it. Put the final answer in \boxed{{}}.",
        r"{question} A previous answer was {attempt}. Solve it again to confirm or correct it. Put the final answer in \boxed{{}}.",
        r"Problem: {question} Proposed answer: {attempt} Check it, then confirm or fix it. Final answer in \boxed{{}}.",
        r"Here is a problem and an answer to check. Problem: {question} Answer: {attempt} Confirm or correct it. Final answer in \boxed{{}}.",
    ),
    ("answer", "wrong"): (
        r"Problem: {question} Your previous answer was {attempt}. It is wrong. Try again. Put the final answer in \boxed{{}}.",
        r"{question} The answer {attempt} is wrong. Solve the problem again from the start. Final answer in \boxed{{}}.",
        r"Problem: {question} Wrong answer: {attempt} The correct answer is different. Put the final answer in \boxed{{}}.",
        r"Your previous answer to this problem was wrong. Problem: {question} Wrong answer: {attempt} Try again. Final answer in \boxed{{}}.",
    ),
}

NUM_POINTWISE_TEMPLATES = len(_POINTWISE["yesno"])
"""Pointwise templates per verdict vocabulary."""
NUM_PAIRWISE_TEMPLATES = len(_PAIRWISE)
"""Pairwise templates."""
NUM_REFLECTION_TEMPLATES = len(_REFLECTION["full", "neutral"])
"""Reflection templates per (show, tone) combination."""

assert all(len(t) == NUM_POINTWISE_TEMPLATES for t in _POINTWISE.values())
assert all(len(t) == NUM_REFLECTION_TEMPLATES for t in _REFLECTION.values())


def _pick(pool: Sequence[str], template: int, kind: str) -> str:
    if not 0 <= template < len(pool):
        raise ValueError(f"{kind} template index {template} is out of range 0..{len(pool) - 1}")
    return pool[template]


def pointwise_prompt(question: str, answer: str, vocab: Vocab, template: int) -> str:
    """Ask whether ``answer`` is a correct final answer to ``question``.

    The verdict is ``POINTWISE_VERDICTS[vocab]``: (correct, incorrect), boxed.
    """
    if vocab not in _POINTWISE:
        raise ValueError(f"pointwise vocab must be one of {sorted(_POINTWISE)}, got {vocab!r}")
    text = _pick(_POINTWISE[vocab], template, "pointwise")
    return text.format(question=question, answer=answer)


def pairwise_prompt(question: str, answer_a: str, answer_b: str, template: int) -> str:
    """Ask which of two final answers to ``question`` is correct; the verdict is ``A`` or ``B``, boxed."""
    text = _pick(_PAIRWISE, template, "pairwise")
    return text.format(question=question, answer_a=answer_a, answer_b=answer_b)


def reflection_prompt(question: str, attempt: str, show: Show, tone: Tone, template: int) -> str:
    """Ask for a fresh, boxed final answer to ``question`` given a previous attempt.

    ``show="full"``: ``attempt`` is the whole previous response; ``"answer"``: only its final
    answer. ``tone="wrong"`` says the attempt is wrong; ``"neutral"`` asks to check it and
    confirm or fix it.
    """
    if (show, tone) not in _REFLECTION:
        raise ValueError(
            f"reflection show/tone must be full|answer and neutral|wrong, got {show!r}, {tone!r}"
        )
    text = _pick(_REFLECTION[show, tone], template, "reflection")
    return text.format(question=question, attempt=attempt)


def judge_response(steps: str, own: str, shown: Sequence[str], verdict: str) -> str:
    r"""A judge response for the tiny-task warm start: re-derivation, results side by side, verdict.

    ``steps`` is the worked solution without its final box, ``own`` its result, ``shown`` the one
    (pointwise) or two (pairwise, slots A and B) candidate answers from the prompt::

        judge_response("3+5-2=6.", "6", ["7"], "No")
        == "3+5-2=6. Mine: 6. Given: 7. \boxed{No}"
    """
    if len(shown) == 1:
        return f"{steps} Mine: {own}. Given: {shown[0]}. \\boxed{{{verdict}}}"
    if len(shown) == 2:
        return f"{steps} Mine: {own}. A: {shown[0]}. B: {shown[1]}. \\boxed{{{verdict}}}"
    raise ValueError(f"judge_response shows one or two answers, got {len(shown)}")

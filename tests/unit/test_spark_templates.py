"""SPARK prompt templates: distinct wordings, verbatim inserts, boxed verdicts, tiny-tokenizer fit."""

import itertools
import re

import pytest

from megatron_spark.data.tokenizer import load_tokenizer
from megatron_spark.spark.templates import (
    NUM_PAIRWISE_TEMPLATES,
    NUM_POINTWISE_TEMPLATES,
    NUM_REFLECTION_TEMPLATES,
    PAIRWISE_CHOICES,
    POINTWISE_VERDICTS,
    judge_response,
    pairwise_prompt,
    pointwise_prompt,
    reflection_prompt,
)

QUESTION = "Compute 3+5-2."
ANSWER = "6"
FULL_ATTEMPT = "3+5-2=7. \\boxed{7}"
COMBOS = list(itertools.product(["full", "answer"], ["neutral", "wrong"]))


def _pointwise(vocab):
    return [pointwise_prompt(QUESTION, ANSWER, vocab, t) for t in range(NUM_POINTWISE_TEMPLATES)]


def _pairwise():
    return [pairwise_prompt(QUESTION, "6", "7", t) for t in range(NUM_PAIRWISE_TEMPLATES)]


def _reflection(show, tone):
    attempt = FULL_ATTEMPT if show == "full" else "7"
    return [reflection_prompt(QUESTION, attempt, show, tone, t) for t in range(NUM_REFLECTION_TEMPLATES)]


def _all_prompts():
    prompts = _pointwise("yesno") + _pointwise("ab") + _pairwise()
    for show, tone in COMBOS:
        prompts += _reflection(show, tone)
    return prompts


def _has_word(text, word):
    return re.search(rf"\b{word}\b", text) is not None


def test_template_counts():
    assert NUM_POINTWISE_TEMPLATES >= 6
    assert NUM_PAIRWISE_TEMPLATES >= 6
    assert NUM_REFLECTION_TEMPLATES >= 3
    assert POINTWISE_VERDICTS == {"yesno": ("Yes", "No"), "ab": ("A", "B")}
    assert PAIRWISE_CHOICES == ("A", "B")


def test_every_wording_is_distinct():
    yesno, ab, pairwise = _pointwise("yesno"), _pointwise("ab"), _pairwise()
    assert len(set(yesno)) == len(yesno)
    assert len(set(ab)) == len(ab)
    assert not set(yesno) & set(ab)
    assert len(set(pairwise)) == len(pairwise)
    reflections = [p for show, tone in COMBOS for p in _reflection(show, tone)]
    assert len(set(reflections)) == len(reflections)  # also across (show, tone) combinations


def test_inserts_are_verbatim():
    question = "Odd {braces} and {answer} and \\frac{1}{2}?"
    for vocab, t in itertools.product(POINTWISE_VERDICTS, range(NUM_POINTWISE_TEMPLATES)):
        text = pointwise_prompt(question, "{x}", vocab, t)
        assert question in text and "{x}" in text
    for t in range(NUM_PAIRWISE_TEMPLATES):
        text = pairwise_prompt(question, "first {a}", "second {b}", t)
        assert question in text and "first {a}" in text and "second {b}" in text
        assert text.index("first {a}") < text.index("second {b}")  # A is shown before B
    for (show, tone), t in itertools.product(COMBOS, range(NUM_REFLECTION_TEMPLATES)):
        text = reflection_prompt(question, "step {1}", show, tone, t)
        assert question in text and "step {1}" in text


def test_judge_templates_name_their_verdicts_and_box():
    for vocab, (correct, wrong) in POINTWISE_VERDICTS.items():
        for text in _pointwise(vocab):
            assert "\\boxed{}" in text and "\\box{" not in text
            assert _has_word(text, correct) and _has_word(text, wrong)
    for text in _pointwise("ab"):
        # A stands for correct, B for incorrect, and the template says so.
        assert "correct" in text and "wrong" in text
        assert text.index("A") < text.index("B")
    for text in _pairwise():
        assert "\\boxed{}" in text
        assert _has_word(text, "A") and _has_word(text, "B")


def test_reflection_asks_for_a_boxed_answer_in_its_tone():
    for show, tone in COMBOS:
        for text in _reflection(show, tone):
            assert "answer in \\boxed{}" in text
            lowered = text.lower()
            if tone == "wrong":
                assert "wrong" in lowered or "error" in lowered
            else:
                assert "wrong" not in lowered and "error" not in lowered
                assert "confirm" in lowered or "keep" in lowered
    for show in ("full", "answer"):
        assert set(_reflection(show, "neutral")).isdisjoint(_reflection(show, "wrong"))


@pytest.mark.parametrize("template", [-1, 10_000])
def test_out_of_range_template_raises(template):
    with pytest.raises(ValueError, match="template index"):
        pointwise_prompt(QUESTION, ANSWER, "yesno", template)
    with pytest.raises(ValueError, match="template index"):
        pairwise_prompt(QUESTION, "6", "7", template)
    with pytest.raises(ValueError, match="template index"):
        reflection_prompt(QUESTION, ANSWER, "answer", "wrong", template)


def test_bad_vocab_show_or_tone_raises():
    with pytest.raises(ValueError, match="vocab"):
        pointwise_prompt(QUESTION, ANSWER, "truefalse", 0)
    with pytest.raises(ValueError, match="show/tone"):
        reflection_prompt(QUESTION, ANSWER, "steps", "wrong", 0)
    with pytest.raises(ValueError, match="show/tone"):
        reflection_prompt(QUESTION, ANSWER, "full", "rude", 0)


def test_judge_response_format():
    assert judge_response("3+5-2=6.", "6", ["7"], "No") == "3+5-2=6. 6-7=-1. \\boxed{No}"
    assert judge_response("3+5-2=6.", "6", ["6"], "Yes") == "3+5-2=6. 6-6=0. \\boxed{Yes}"
    assert judge_response("1-9=-8.", "-8", ("-8", "3"), "A") == "1-9=-8. B: -8-3=-11. A: -8+8=0. \\boxed{A}"
    assert judge_response("3+5-2=6.", "6", ("-7", "6"), "B") == "3+5-2=6. B: 6-6=0. A: 6+7=13. \\boxed{B}"
    with pytest.raises(ValueError, match="integer"):
        judge_response("3+5-2=6.", "6", ["1/2"], "No")
    with pytest.raises(ValueError):
        judge_response("3+5-2=6.", "6", [], "A")
    with pytest.raises(ValueError):
        judge_response("3+5-2=6.", "6", ["1", "2", "3"], "A")


def test_template_text_is_short():
    blanks = [
        pointwise_prompt("", "", v, t) for v in POINTWISE_VERDICTS for t in range(NUM_POINTWISE_TEMPLATES)
    ]
    blanks += [pairwise_prompt("", "", "", t) for t in range(NUM_PAIRWISE_TEMPLATES)]
    blanks += [
        reflection_prompt("", "", s, tone, t) for (s, tone) in COMBOS for t in range(NUM_REFLECTION_TEMPLATES)
    ]
    assert max(len(b) for b in blanks) < 120


def test_templates_fit_the_tiny_tokenizer():
    tok = load_tokenizer("builtin:arith")
    for text in _all_prompts():
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert len(ids) <= 96


@pytest.mark.parametrize("vocab", sorted(POINTWISE_VERDICTS))
def test_question_first_style_puts_the_question_first_and_the_candidate_last(vocab):
    from megatron_spark.spark.templates import pairwise_prompt as pair

    for t in range(NUM_POINTWISE_TEMPLATES):
        text = pointwise_prompt("QQQ", "CAND", vocab, t, "question_first")
        assert text.index("QQQ") < text.index("\\boxed{}") < text.index("CAND")
        assert text.rstrip().endswith("CAND")
    for t in range(NUM_PAIRWISE_TEMPLATES):
        text = pair("QQQ", "AAA", "BBB", t, "question_first")
        assert text.index("QQQ") < text.index("AAA") < text.index("BBB") and text.endswith("BBB")
    for (show, tone), t in itertools.product(COMBOS, range(NUM_REFLECTION_TEMPLATES)):
        text = reflection_prompt("QQQ", "ATT", show, tone, t, "question_first")
        assert text.index("QQQ") < text.index("ATT") and text.endswith("ATT")
    with pytest.raises(ValueError, match="template style"):
        pointwise_prompt("QQQ", "CAND", vocab, 0, "sideways")

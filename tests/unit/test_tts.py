"""Test-time scaling with the policy as its own judge, against a scripted generator.

The scripted ``generate`` answers each prompt from its text alone: a rule maps (what kind of
prompt it is, a text it shows) to a reply, so the tests do not depend on batching or call order.
A list of replies is handed out in order to repeated copies of one prompt within a call (the
``n`` samples of best-of-n).
"""

import math
import re
from collections import Counter
from dataclasses import replace

import pytest

from megatron_spark.data.tokenizer import load_tokenizer
from megatron_spark.rollout.protocol import GREEDY_TOP_P, Completion
from megatron_spark.spark.tts import best_of_n, redo_outcomes, self_reflect, verdict_probability

TOK = load_tokenizer("builtin:arith")
YESNO = ("Yes", "No")
OTHER_LOGPROB = -5.0  # every token outside a verdict: counting one by mistake shows as a factor e^-5

Q1, Q2, Q3 = "Compute 3+5-2.", "Compute 10+20.", "Compute 40+1."
RIGHT1, WRONG1 = "3+5=8. 8-2=6. \\boxed{6}", "3+5=8. 8-2=7. \\boxed{7}"
RIGHT2, WRONG2 = "10+20=30. \\boxed{30}", "10+20=31. \\boxed{31}"


def _completion(parts, verdict_logprob=None, verdict_part=None):
    """Tokens of ``"".join(parts)`` then eos; part ``verdict_part``'s tokens get ``verdict_logprob``."""
    ids, logprobs = [], []
    for i, part in enumerate(parts):
        part_ids = TOK.encode(part)
        ids += part_ids
        logprobs += [verdict_logprob if i == verdict_part else OTHER_LOGPROB] * len(part_ids)
    assert TOK.decode(ids) == "".join(parts)  # the parts tokenize as the whole text would
    return Completion([], ids + [TOK.eos_id], logprobs + [OTHER_LOGPROB], "stop")


def _reply(text):
    return _completion([text])


def _verdict(word, p=0.9):
    """A judge reply boxing ``word``, whose verdict tokens have probability ``p`` together."""
    return _completion(["Mine: 6. Given: 7. \\boxed{", word, "}"], math.log(p) / len(TOK.encode(word)), 1)


def _kind(prompt):
    if prompt in (Q1, Q2, Q3):
        return "question"
    if re.search(r"\bYes\b", prompt):
        return "judge"  # only the pointwise Yes/No templates name "Yes"
    return "reflect"


def _shows(prompt, text):
    if _kind(prompt) == "question":
        return prompt == text
    return re.search(rf"(?<!\d){re.escape(text)}(?!\d)", prompt) is not None


class Scripted:
    """Answers each prompt by the one rule that matches it. A rule's list of replies is handed out
    one per occurrence of the same prompt: within one call, or across calls (``across_calls``)."""

    def __init__(self, rules, across_calls=False):
        self.rules = rules
        self.kinds = []  # the kind of every prompt, in call order
        self.across_calls = across_calls
        self.asked = Counter()  # per prompt, over every call

    def __call__(self, prompts, params):
        assert prompts, "generate called with no prompts"
        seen = self.asked if self.across_calls else Counter()
        out = []
        for prompt in prompts:
            kind = _kind(prompt)
            self.kinds.append(kind)
            replies = [r for (k, shown), r in self.rules.items() if k == kind and _shows(prompt, shown)]
            assert len(replies) == 1, f"{len(replies)} rules match {prompt!r}"
            reply = replies[0]
            if isinstance(reply, list):
                reply = reply[seen[prompt]]
                seen[prompt] += 1
            out.append(replace(reply, prompt_ids=TOK.encode_prompt(prompt)))
        return out


def _reflect(questions, rules, rounds):
    generate = Scripted(rules)
    result = self_reflect(questions, generate, TOK, rounds, max_new_tokens=32, judge_max_new_tokens=16)
    assert all(g <= 1 + 2 * rounds for g in result.generations)
    return result, generate.kinds


def test_accepted_first_answer_is_kept():
    rules = {("question", Q1): _reply(RIGHT1), ("judge", "6"): _verdict("Yes")}
    result, kinds = _reflect([Q1], rules, rounds=3)
    assert result.responses == [RIGHT1] and result.generations == [2]
    assert kinds == ["question", "judge"]


def test_rejected_answer_is_reflected_and_counts_when_rounds_run_out():
    rules = {
        ("question", Q1): _reply(WRONG1),
        ("judge", "7"): _verdict("No"),
        ("reflect", "7"): _reply(RIGHT1),
    }
    result, kinds = _reflect([Q1], rules, rounds=1)
    assert result.responses == [RIGHT1] and result.generations == [3]
    assert kinds == ["question", "judge", "reflect"]  # the last reflection is not judged


def test_no_then_yes_stops_at_the_accepted_reflection():
    rules = {
        ("question", Q1): _reply(WRONG1),
        ("judge", "7"): _verdict("No"),
        ("reflect", "7"): _reply(RIGHT1),
        ("judge", "6"): _verdict("Yes"),
    }
    result, kinds = _reflect([Q1], rules, rounds=3)
    assert result.responses == [RIGHT1] and result.generations == [4]
    assert kinds == ["question", "judge", "reflect", "judge"]


@pytest.mark.parametrize(
    "verdict",
    ["Mine: 7. \\boxed{Maybe}", "Mine: 7. Yes", "\\boxed{Yes} \\boxed{No}", "\\boxed{Yes or No}", ""],
)
def test_unparseable_verdict_counts_as_rejection(verdict):
    rules = {
        ("question", Q1): _reply(WRONG1),
        ("judge", "7"): _reply(verdict),
        ("reflect", "7"): _reply(RIGHT1),
    }
    result, kinds = _reflect([Q1], rules, rounds=1)
    assert result.responses == [RIGHT1] and result.generations == [3]
    assert kinds == ["question", "judge", "reflect"]


@pytest.mark.parametrize("unboxed", ["3+5=8. 8-2=7. So 7.", "3+5=8. 8-2=7. \\boxed{}"])
def test_answer_without_a_box_is_reflected_unjudged(unboxed):
    rules = {
        ("question", Q1): _reply(unboxed),
        ("reflect", "7"): _reply(RIGHT1),
        ("judge", "6"): _verdict("Yes"),
    }
    result, kinds = _reflect([Q1], rules, rounds=2)
    assert result.responses == [RIGHT1] and result.generations == [3]
    assert kinds == ["question", "reflect", "judge"]


def test_zero_rounds_returns_the_greedy_answers():
    rules = {("question", Q1): _reply(WRONG1), ("question", Q2): _reply(RIGHT2)}
    result, kinds = _reflect([Q1, Q2], rules, rounds=0)
    assert result.responses == [WRONG1, RIGHT2] and result.generations == [1, 1]
    assert kinds == ["question", "question"]


def test_generations_are_bounded_per_problem():
    rules = {
        ("question", Q1): _reply(RIGHT1),
        ("judge", "6"): _verdict("Yes"),
        ("question", Q2): _reply(WRONG2),
        ("judge", "31"): _verdict("No"),
        ("reflect", "31"): _reply(WRONG2),  # never fixes it
    }
    for rounds in range(4):
        result, _ = _reflect([Q1, Q2], rules, rounds)
        assert result.responses == [RIGHT1, WRONG2]
        assert result.generations == [min(2, 1 + rounds), 1 + 2 * rounds]


def test_negative_rounds_raise():
    with pytest.raises(ValueError, match="rounds"):
        self_reflect([Q1], Scripted({}), TOK, -1, max_new_tokens=32, judge_max_new_tokens=16)


def _best(questions, rules, n):
    generate = Scripted(rules)
    return best_of_n(questions, generate, TOK, n, max_new_tokens=32, judge_max_new_tokens=16), generate.kinds


def test_best_of_n_picks_the_highest_p_yes():
    samples = [_reply(WRONG1), _reply(RIGHT1), _reply("3+5=8. 8-2=4. \\boxed{4}")]
    rules = {
        ("question", Q1): samples,
        ("judge", "7"): _verdict("Yes", 0.6),
        ("judge", "6"): _verdict("Yes", 0.9),
        ("judge", "4"): _verdict("Yes", 0.3),
    }
    result, kinds = _best([Q1], rules, n=3)
    assert result.responses == [RIGHT1] and result.generations == [6]
    assert kinds == ["question"] * 3 + ["judge"] * 3


@pytest.mark.parametrize(
    "judge7,judge6,best",
    [
        (_verdict("No", 0.95), _verdict("No", 0.55), RIGHT1),  # 0.05 < 0.45
        (_verdict("Yes", 0.7), _verdict("No", 0.2), RIGHT1),  # 0.7 < 0.8: an unsure No beats a weak Yes
        (_verdict("Yes", 0.1), _reply("\\boxed{Maybe}"), WRONG1),  # 0.1 > 0: no verdict scores 0
    ],
)
def test_best_of_n_scores_no_verdicts_by_one_minus_p_no(judge7, judge6, best):
    rules = {
        ("question", Q1): [_reply(WRONG1), _reply(RIGHT1)],
        ("judge", "7"): judge7,
        ("judge", "6"): judge6,
    }
    result, _ = _best([Q1], rules, n=2)
    assert result.responses == [best]


def test_best_of_n_breaks_exact_ties_by_the_majority_answer():
    other_right = "5-2=3. 3+3=6. \\boxed{6}"
    samples = [_reply(WRONG1), _reply("3+5=8. 8-2=4. \\boxed{4}"), _reply(RIGHT1), _reply(other_right)]
    same = _verdict("Yes", 0.8)
    rules = {("question", Q1): samples, ("judge", "7"): same, ("judge", "4"): same, ("judge", "6"): same}
    result, _ = _best([Q1], rules, n=4)
    assert result.responses == [RIGHT1]  # the first of the two samples that answer 6


def test_best_of_n_does_not_judge_unboxed_samples_and_keeps_questions_apart():
    rules = {
        ("question", Q1): [_reply("I do not know."), _reply(WRONG1)],
        ("question", Q2): [_reply(WRONG2), _reply(RIGHT2)],
        ("judge", "7"): _verdict("No", 0.9),
        ("judge", "31"): _verdict("Yes", 0.4),
        ("judge", "30"): _verdict("Yes", 0.5),
    }
    result, kinds = _best([Q1, Q2], rules, n=2)
    assert result.responses == [WRONG1, RIGHT2]  # 0.1 beats the unboxed sample's 0
    assert result.generations == [3, 4]
    assert kinds.count("judge") == 3


@pytest.mark.parametrize(
    "parts,verdict",
    [
        (["Mine: 6. Given: 7. \\boxed{", "No", "}"], "No"),
        (["Mine: 6. Given: 6. \\boxed{", "Yes", "}. Done."], "Yes"),  # tokens after the box excluded
        ([" \\boxed{", " yes ", "}"], "Yes"),  # a verdict of several tokens, whitespace in the box
        (["\\boxed{No} Mine: 6. \\boxed{", "No", "}"], "No"),  # only the last box counts
        (["Mine: 6. \\boxed{", "No", "} then \\boxed{"], "No"),  # a truncated, unclosed box
        (["Mine: 6. \\fbox{", "Yes", "}"], "Yes"),
        (["Mine: 6. \\boxed {", "Yes", "}"], "Yes"),
    ],
)
def test_verdict_probability_sums_exactly_the_verdict_tokens(parts, verdict):
    content_tokens = len(TOK.encode(parts[1]))
    completion = _completion(parts, -0.25, 1)
    got, p = verdict_probability(completion, TOK, YESNO)
    assert got == verdict
    assert p == pytest.approx(math.exp(-0.25 * content_tokens), rel=1e-12)


def test_verdict_probability_by_hand():
    text = "Mine: 6. Given: 7. \\boxed{No}"
    ids = TOK.encode(text) + [TOK.eos_id]
    pieces = [TOK.decode([i]) for i in ids]
    assert pieces[-4:] == ["{", "No", "}", ""]  # "No" is one token, third from the end
    logprobs = [-(k + 1) / 100 for k in range(len(ids))]
    _, p = verdict_probability(Completion([], ids, logprobs, "stop"), TOK, YESNO)
    assert p == pytest.approx(math.exp(logprobs[-3]), rel=1e-12)


def test_verdict_probability_without_a_verdict_is_zero():
    assert verdict_probability(_reply("Mine: 6. \\boxed{Maybe}"), TOK, YESNO) == (None, 0.0)
    assert verdict_probability(_reply("Yes"), TOK, YESNO) == (None, 0.0)


class Recording(Scripted):
    """Also records the sampling parameters of every call, by the kind of its prompts."""

    def __init__(self, rules, across_calls=False):
        super().__init__(rules, across_calls)
        self.params = []

    def __call__(self, prompts, params):
        self.params.append((_kind(prompts[0]), params))
        return super().__call__(prompts, params)


_NEVER_FIXED = {
    ("question", Q1): _reply(WRONG1),
    ("judge", "7"): _verdict("No"),
    ("reflect", "7"): _reply(WRONG1),
}


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_redos_are_sampled_and_seeded_per_round_the_answer_and_verdicts_greedy(temperature):
    generate = Recording(_NEVER_FIXED)
    self_reflect([Q1], generate, TOK, 3, 32, 16, redo_temperature=temperature, seed=7)
    kinds = [k for k, _ in generate.params]
    assert kinds == ["question"] + ["judge", "reflect"] * 3
    for kind, params in generate.params:
        if kind == "reflect":
            assert (params.temperature, params.top_p) == (temperature, 1.0)
        else:
            assert params.top_p == GREEDY_TOP_P
    assert [p.seed for k, p in generate.params if k == "reflect"] == [7, 8, 9]


def test_redo_temperature_zero_redoes_greedily():
    generate = Recording(_NEVER_FIXED)
    self_reflect([Q1], generate, TOK, 2, 32, 16, redo_temperature=0.0)
    assert all(p.top_p == GREEDY_TOP_P for _, p in generate.params)


@pytest.mark.parametrize("temperature", [-0.1, math.inf, math.nan])
def test_bad_redo_temperature_raises(temperature):
    with pytest.raises(ValueError, match="redo_temperature"):
        self_reflect([Q1], Scripted({}), TOK, 1, 32, 16, redo_temperature=temperature)


def test_redo_outcomes_decompose_the_gain():
    wrong3 = "40+1=44. \\boxed{44}"
    rules = {
        # Q1: wrong, rejected, the redo repeats 7, rejected again, then fixed: fixed, 2 redos, 1 repeat.
        ("question", Q1): _reply(WRONG1),
        ("judge", "7"): _verdict("No"),
        ("reflect", "7"): [_reply(WRONG1), _reply(RIGHT1)],
        # Q2: right but rejected, the redo is wrong: broken, 1 redo, no repeat.
        ("question", Q2): _reply(RIGHT2),
        ("judge", "30"): _verdict("No"),
        ("reflect", "30"): _reply("10+20=31. \\boxed{31}"),
        ("judge", "31"): _verdict("Yes"),
        # Q3: wrong and accepted: neither fixed nor redone.
        ("question", Q3): _reply(wrong3),
        ("judge", "44"): _verdict("Yes"),
    }

    result = self_reflect([Q1, Q2, Q3], Scripted(rules, across_calls=True), TOK, 2, 32, 16)
    assert result.responses == [RIGHT1, "10+20=31. \\boxed{31}", wrong3]
    first, final = [False, True, False], [True, False, False]
    assert redo_outcomes(result, first, final) == {
        "first_wrong": 2,
        "fixed": 1,
        "first_right": 1,
        "broken": 1,
        "redos": 3,
        "repeats": 1,
    }
    with pytest.raises(ValueError, match="one of each per problem"):
        redo_outcomes(result, first[:2], final)


def test_given_first_responses_are_not_generated_again():
    rules = {
        ("judge", "7"): _verdict("No"),
        ("reflect", "7"): _reply(RIGHT1),
        ("judge", "6"): _verdict("Yes"),
    }
    generate = Scripted(rules)  # no rule answers the bare question: asking it would fail
    result = self_reflect([Q1], generate, TOK, 2, 32, 16, first=[WRONG1])
    assert result.responses == [RIGHT1] and result.generations == [4]
    assert generate.kinds == ["judge", "reflect", "judge"]
    with pytest.raises(ValueError, match="2 first responses for 1 questions"):
        self_reflect([Q1], generate, TOK, 2, 32, 16, first=[WRONG1, WRONG1])


def test_resample_control_redoes_the_bare_question_sampled():
    rules = {
        ("question", Q1): [_reply(WRONG1), _reply(RIGHT1)],
        ("judge", "7"): _verdict("No"),
        ("judge", "6"): _verdict("Yes"),
    }
    generate = Recording(rules, across_calls=True)
    result = self_reflect([Q1], generate, TOK, 2, 32, 16, seed=3, redo_prompt="question")
    assert result.responses == [RIGHT1] and result.generations == [4]
    assert [k for k, _ in generate.params] == ["question", "judge", "question", "judge"]
    redo = generate.params[2][1]
    assert (redo.temperature, redo.top_p, redo.seed) == (1.0, 1.0, 3)
    assert generate.params[0][1].top_p == GREEDY_TOP_P
    with pytest.raises(ValueError, match="redo_prompt"):
        self_reflect([Q1], generate, TOK, 1, 32, 16, redo_prompt="reflection")

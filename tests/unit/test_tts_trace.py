"""Self-reflection reports what each round did: the answer judged, the verdict, the judge's reply
and the reflection that replaced a rejected answer (``generate --tts self-reflect`` writes it in
each row's ``rounds``)."""

from megatron_spark.spark.tts import best_of_n
from tests.unit.test_tts import Q1, Q2, RIGHT1, RIGHT2, TOK, WRONG1, Scripted, _reflect, _reply, _verdict

JUDGE_TEXT = "Mine: 6. Given: 7. \\boxed{%s}"


def test_rounds_record_answer_verdict_and_reflection():
    rules = {
        ("question", Q1): _reply(WRONG1),
        ("judge", "7"): _verdict("No"),
        ("reflect", "7"): _reply(RIGHT1),
        ("judge", "6"): _verdict("Yes"),
        ("question", Q2): _reply("10+20=30. So 30."),  # no final answer: reflected unjudged
        ("reflect", "30"): _reply(RIGHT2),
        ("judge", "30"): _reply("\\boxed{Maybe}"),
    }
    result, _ = _reflect([Q1, Q2], rules, rounds=3)
    assert result.rounds[0] == [
        {"answer": "7", "verdict": "No", "judge_reply": JUDGE_TEXT % "No", "reflection": RIGHT1},
        {"answer": "6", "verdict": "Yes", "judge_reply": JUDGE_TEXT % "Yes"},
    ]
    assert result.rounds[1][0] == {
        "answer": None,
        "verdict": None,
        "judge_reply": None,
        "reflection": RIGHT2,
    }
    assert result.rounds[1][1] == {
        "answer": "30",
        "verdict": None,  # unparseable: rejected
        "judge_reply": "\\boxed{Maybe}",
        "reflection": RIGHT2,
    }
    assert len(result.rounds[1]) == 3
    # The trace agrees with the generation count: the first answer, then per round a verdict (when
    # judged) and a reflection (when not accepted).
    assert result.generations == [1 + 2 + 1, 1 + 1 + 2 + 2]


def test_best_of_n_has_no_rounds():
    rules = {("question", Q1): [_reply(RIGHT1)], ("judge", "6"): _verdict("Yes")}
    result = best_of_n([Q1], Scripted(rules), TOK, 1, max_new_tokens=32, judge_max_new_tokens=16)
    assert result.rounds == []

"""The demo's test-time lines say how many of its own answers each share is of, and say so when
there are none (a share of no answers is not 0%)."""

from megatron_spark.demo import _test_time_lines


def _result(own_wrong, own_right):
    judge = {
        "own_wrong": own_wrong,
        "own_right": own_right,
        "own_wrong_rejected": 1.0,
        "own_right_accepted": 0.0,
    }
    return {"judge": judge, "tts": {}, "reasoning": {"pass@1": 0.0}}


def test_shares_name_their_counts():
    assert _test_time_lines(_result(20, 5)) == (
        "its own answers: rejects 100.0% of the 20 wrong ones, accepts 0.0% of the 5 right ones"
    )


def test_no_right_answers_is_not_reported_as_zero_percent_accepted():
    assert (
        _test_time_lines(_result(20, 0)) == "its own answers: rejects 100.0% of the 20 wrong ones, none right"
    )
    assert _test_time_lines(_result(0, 3)) == "its own answers: none wrong, accepts 0.0% of the 3 right ones"


def test_self_reflection_says_what_it_fixed_and_what_greedy_redos_give():
    reflect = {"accuracy": 0.575, "majority_k": 4, "majority_at_equal_generations": 0.42}
    counts = {"first_wrong": 106, "fixed": 23, "first_right": 94, "broken": 2, "redos": 150, "repeats": 11}
    greedy = {**reflect, "accuracy": 0.485, "first_wrong": 106, "fixed": 3, "first_right": 94, "broken": 0}
    greedy.update(redos=176, repeats=142)
    result = _result(106, 94)
    result["reasoning"]["pass@1"] = 0.47
    result["tts"] = {"self-reflect": {**reflect, **counts}, "self-reflect-greedy-redo": greedy}
    assert _test_time_lines(result).splitlines()[1:] == [
        "self-reflection at test time: 57.5% (greedy 47.0%; majority vote with as many generations, 4: 42.0%)",
        "  it fixed 23 of its 106 wrong answers and broke 2 of its 94 right ones; redoing greedily "
        "instead: 48.5% (142 of 176 redos repeat the rejected answer)",
    ]
    result["tts"]["self-reflect-resample"] = {**reflect, "accuracy": 0.53, **counts, "fixed": 14, "broken": 1}
    assert _test_time_lines(result).splitlines()[-1] == (
        "  resampling the bare question instead of reflecting (the control): 53.0% (fixed 14, broke 1)"
    )

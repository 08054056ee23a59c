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

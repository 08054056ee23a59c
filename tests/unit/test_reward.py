"""Answer extraction, the verifiers, and the wall-clock limit that stops a hanging check."""

import logging
import signal
import textwrap
import threading
import time

import pytest

from megatron_spark.errors import UserError
from megatron_spark.reward.extract import extract_boxed
from megatron_spark.reward.verifiers import (
    ChoiceVerifier,
    ExactVerifier,
    FunctionVerifier,
    MathVerifier,
    Verdict,
    make_verifier,
    verify_batch,
)


@pytest.mark.parametrize(
    "text,last,first",
    [
        ("so \\boxed{41}.", "41", "41"),
        ("\\boxed{ 41 } then \\boxed{42}", "42", "41"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}"),
        ("\\boxed{\\boxed{1} + 2}", "\\boxed{1} + 2", "\\boxed{1} + 2"),  # the outer box wins
        ("\\boxed {7} and \\fbox{8}", "8", "7"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", "\\{1, 2\\}"),
        ("\\boxed{3} then \\boxed{4", "3", "3"),  # an unclosed box is ignored
        ("\\boxed{1 \\boxed{5}", "5", "5"),  # ... and the search goes on inside it
        ("\\boxed{}", "", ""),
        ("the answer is 41", None, None),
        ("\\boxed 41", None, None),
        ("\\boxedx{41}", None, None),
    ],
)
def test_extract_boxed(text, last, first):
    assert extract_boxed(text) == last
    assert extract_boxed(text, "last") == last
    assert extract_boxed(text, "first") == first


@pytest.mark.parametrize(
    "response,answer,reward",
    [
        ("46-5=41. \\boxed{41}", "41", 1.0),
        ("\\boxed{41.0}", "41", 1.0),  # math-verify: numerically equal
        ("\\boxed{-3}", "-3", 1.0),
        ("\\boxed{3}", "-3", 0.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("\\boxed{41}", "42", 0.0),
        ("\\boxed{}", "41", 0.0),
        ("the answer is 41", "41", 0.0),  # no box: wrong
        ("\\boxed{40} no wait \\boxed{41}", "41", 1.0),  # the last box counts
    ],
)
def test_math_verifier(response, answer, reward):
    verdict = MathVerifier()(response, answer)
    assert verdict.reward == reward and not verdict.timed_out
    assert verdict.extracted == extract_boxed(response)


def test_box_choice_first():
    assert MathVerifier(box="first")("\\boxed{40} no wait \\boxed{41}", "41").reward == 0.0
    assert ExactVerifier(box="first")("\\boxed{41} then \\boxed{40}", "41").reward == 1.0


def test_exact_verifier_is_strict_but_strips():
    v = ExactVerifier()
    assert v("\\boxed{ 41 }", " 41\n") == Verdict(1.0, "41")
    assert v("\\boxed{041}", "41").reward == 0.0
    assert v("\\boxed{41.0}", "41").reward == 0.0
    assert v("41", "41") == Verdict(0.0, None)


@pytest.mark.parametrize(
    "response,reward",
    [
        ("\\boxed{B}", 1.0),
        ("\\boxed{(B)}", 1.0),
        ("\\boxed{B)}", 1.0),
        ("\\boxed{\\text{B}}", 1.0),
        ("\\boxed{\\textbf{(b)}}", 1.0),
        ("\\boxed{b}", 1.0),
        ("  (B) ", 1.0),  # a response that is only a letter needs no box
        ("\\boxed{A}", 0.0),
        ("\\boxed{BC}", 0.0),
        ("The answer is B", 0.0),
        ("\\boxed{}", 0.0),
    ],
)
def test_choice_verifier(response, reward):
    assert ChoiceVerifier()(response, "B").reward == reward
    assert ChoiceVerifier()(response, "(b)").reward == reward


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    """A user module of reward functions, importable as ``user_rewards``."""
    (tmp_path / "user_rewards.py").write_text(
        textwrap.dedent(
            """
            import time

            def contains(response, answer):
                return 1.0 if answer in response else 0.0

            def half(response, answer):
                return 0.5

            def loop(response, answer):
                while True:
                    try:
                        pass
                    except Exception:  # a broad except must not swallow the timeout
                        pass

            def sleep(response, answer):
                time.sleep(1000)

            def nothing(response, answer):
                return None

            def boom(response, answer):
                raise ZeroDivisionError("user bug")

            not_callable = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_rewards"


def test_function_verifier(user_rewards):
    v = make_verifier("function", function=f"{user_rewards}:contains")
    assert v("it is \\boxed{41}", "41") == Verdict(1.0, "41")
    assert v("it is 40", "41") == Verdict(0.0, None)
    assert make_verifier("function", function=f"{user_rewards}:half")("x", "y").reward == 0.5
    with pytest.raises(UserError, match="user_rewards:nothing' returned None"):
        make_verifier("function", function=f"{user_rewards}:nothing")("x", "y")
    with pytest.raises(ZeroDivisionError, match="user bug"):  # the user's traceback is kept
        make_verifier("function", function=f"{user_rewards}:boom")("x", "y")


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "no_such_module_xyz:f",
            "reward function 'no_such_module_xyz:f': cannot import 'no_such_module_xyz'",
        ),
        ("user_rewards", "reward function 'user_rewards': expected 'package.module:function'"),
        ("user_rewards:missing", "'user_rewards' has no attribute 'missing'"),
        ("user_rewards:not_callable", "'not_callable' is not callable"),
    ],
)
def test_bad_function_specs(user_rewards, spec, message):
    with pytest.raises(UserError) as e:
        make_verifier("function", function=spec)
    assert message in str(e.value)


@pytest.mark.parametrize("name", ["loop", "sleep"])
def test_hanging_function_is_interrupted_on_the_main_thread(user_rewards, name, caplog):
    v = make_verifier("function", function=f"{user_rewards}:{name}", timeout_s=0.5)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        verdict = v("\\boxed{1}", "1")
    assert time.monotonic() - start < 2.0
    assert verdict == Verdict(0.0, "1", timed_out=True)
    assert "no verdict within 0.5 s" in caplog.text
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left armed
    assert v.fn is not None and FunctionVerifier(f"{user_rewards}:half")("x", "y").reward == 0.5


def test_hanging_function_is_interrupted_off_the_main_thread(user_rewards):
    v = make_verifier("function", function=f"{user_rewards}:loop", timeout_s=0.5)
    results = {}

    def worker():
        start = time.monotonic()
        results["verdict"] = v("x", "y")
        results["elapsed_s"] = time.monotonic() - start
        results["math"] = MathVerifier()("\\boxed{41.0}", "41")  # math-verify arms no signal here

    before = threading.active_count()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert results["verdict"].timed_out and results["elapsed_s"] < 2.0
    assert results["math"].reward == 1.0
    deadline = time.monotonic() + 5  # the looping helper thread is stopped, not left spinning
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_an_enclosing_timer_survives_a_check():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert MathVerifier(timeout_s=1.0)("\\boxed{2}", "2").reward == 1.0
        remaining_s, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < remaining_s <= 30.0 and not fired
        assert signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kind": "fuzzy"}, "reward kind 'fuzzy': expected one of math, exact, choice, countdown, function"),
        ({"kind": "math", "box": "middle"}, "reward box 'middle'"),
        ({"kind": "math", "timeout_s": 0}, "reward timeout_s=0"),
        ({"kind": "function"}, "exactly when kind is 'function'"),
        ({"kind": "exact", "function": "m:f"}, "exactly when kind is 'function'"),
    ],
)
def test_make_verifier_refuses_bad_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        make_verifier(**kwargs)


def test_make_verifier_kinds_and_batches():
    assert isinstance(make_verifier("math", box="first", timeout_s=2.0), MathVerifier)
    exact = make_verifier("exact")
    assert isinstance(exact, ExactVerifier) and isinstance(make_verifier("choice"), ChoiceVerifier)
    verdicts = verify_batch(exact, ["\\boxed{1}", "\\boxed{2}", "none"], ["1", "1", "1"])
    assert [v.reward for v in verdicts] == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        verify_batch(exact, ["a", "b"], ["a"])

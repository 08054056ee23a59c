"""Early length checks: every phase's longest sequence against the model's positions, named with
its phase and its longest item before the first step or evaluation."""

import random

import pytest

from megatron_spark.config import load_config
from megatron_spark.data.tasks import Problem
from megatron_spark.data.tokenizer import load_tokenizer
from megatron_spark.errors import UserError
from megatron_spark.inference.lengths import check_lengths, item_prompt_bound
from megatron_spark.spark import templates
from megatron_spark.train.config import RunConfig

FIRST = templates.Styles(judge="question_first", reflection="question_first")

TOK = load_tokenizer("builtin:arith")
SHORT = Problem("f.jsonl:1", "Compute 1+2.", "3", "1+2=3. \\boxed{3}")
LONG = Problem("f.jsonl:2", "Compute " + "1+" * 20 + "1.", "21", "\\boxed{21}")


class Task:
    """A file-like task: two train problems, the long one also held out."""

    name = "f"

    def __init__(self, train=(SHORT, LONG), held_out=(LONG,)):
        self._train, self._held_out = list(train), list(held_out)

    def num_train(self):
        return len(self._train)

    def train_problem(self, i):
        return self._train[i]

    def held_out(self):
        return list(self._held_out)


def cfg(*overrides: str) -> RunConfig:
    return load_config(RunConfig, None, ["model.init=preset:tiny-llama", *overrides])


def prompt_tokens(p: Problem) -> int:
    return len(TOK.encode_prompt(p.prompt))


def test_a_prompt_over_max_prompt_tokens_names_the_problem():
    with pytest.raises(UserError) as e:
        check_lengths(cfg("task.max_prompt_tokens=16"), "train", TOK, Task(), 512)
    assert str(e.value) == (
        f"task f (held-out): the prompt of problem f.jsonl:2 is {prompt_tokens(LONG)} tokens, "
        f"more than task.max_prompt_tokens=16"
    )


def test_policy_rollout_names_the_phase_and_the_longest_prompt():
    n = prompt_tokens(LONG)
    check_lengths(cfg(f"rollout.max_new_tokens={512 - n}"), "train", TOK, Task(), 512)  # fits exactly
    with pytest.raises(UserError) as e:
        check_lengths(
            cfg(f"rollout.max_new_tokens={513 - n}", "train.eval_num_problems=0"), "train", TOK, Task(), 512
        )
    assert str(e.value).startswith(
        f"policy rollout: the prompt of problem f.jsonl:2 ({n} tokens) + rollout.max_new_tokens={513 - n} "
        f"= 513 positions; more than the model's max_position_embeddings=512 (model.init=preset:tiny-llama)"
    )


def test_every_phase_that_cannot_fit_is_named_in_one_line():
    c = cfg("rollout.max_new_tokens=600", "spark.enabled=true")
    with pytest.raises(UserError) as e:
        check_lengths(c, "train", TOK, Task(), 512)
    message = str(e.value)
    for phase in ("held-out evaluation:", "policy rollout:", "recycled judge and reflection items:"):
        assert phase in message
    assert "\n" not in message and "spark.max_new_tokens=64" in message


def test_recycled_items_count_a_whole_response_per_slot():
    # The policy's own sequences fit; a reflection prompt showing a whole 200-token response does not.
    c = cfg(
        "rollout.max_new_tokens=200",
        "spark.enabled=true",
        "spark.pairwise=false",
        "train.eval_num_problems=0",
    )
    bound, _ = item_prompt_bound([LONG], ["pointwise", "reflection"], TOK, FIRST, 200)
    assert bound > prompt_tokens(LONG) + 200
    check_lengths(c, "train", TOK, Task(), bound + 64)
    with pytest.raises(UserError) as e:
        check_lengths(c, "train", TOK, Task(), bound + 63)
    message = str(e.value)
    assert message.startswith("recycled judge and reflection items: a reflection prompt")
    assert (
        "on problem f.jsonl:2 showing a whole response (up to 200 tokens), rollout.max_new_tokens=200"
        in message
    )
    assert f"{bound} tokens + spark.max_new_tokens=64 = {bound + 64} positions" in message
    # With pairwise items on, two final answers of up to 200 tokens each are the longest.
    with pytest.raises(
        UserError, match=r"a pairwise prompt .* showing 2 final answers \(up to 200 tokens each\)"
    ):
        check_lengths(
            cfg("rollout.max_new_tokens=200", "spark.enabled=true"), "train", TOK, Task(), bound + 64
        )


def test_the_item_bound_holds_for_a_real_reflection_prompt():
    """A reflection item showing a response of exactly ``slot`` tokens fits the bound."""
    rng = random.Random(0)
    pieces = [str(i) for i in range(10)] + ["+", "=", ".", " ", "Compute", "\\boxed{"]
    for _ in range(20):
        response = "".join(rng.choice(pieces) for _ in range(300))
        ids = TOK.encode(response)[:100]
        attempt = TOK.decode(ids)
        slot = len(ids)
        bound, _ = item_prompt_bound([LONG], ["reflection"], TOK, FIRST, slot)
        for t in range(templates.NUM_REFLECTION_TEMPLATES):
            prompt = templates.reflection_prompt(LONG.prompt, attempt, "full", "wrong", t, "question_first")
            assert len(TOK.encode_prompt(prompt)) <= bound


def test_eval_names_held_out_judge_evaluation_and_test_time_modes():
    with pytest.raises(UserError) as e:
        check_lengths(cfg("rollout.max_new_tokens=300"), "eval", TOK, Task(), 400)
    assert str(e.value).startswith(
        "held-out judge evaluation and test-time self-reflection: a pairwise prompt"
    )
    # generate (eval with no held-out problems) checks only the prompt limit.
    check_lengths(cfg("rollout.max_new_tokens=300", "train.eval_num_problems=0"), "eval", TOK, Task(), 400)


def test_sft_counts_prompt_and_solution_and_needs_solutions():
    longest = Problem("f.jsonl:3", "Compute 1+2.", "3", "1+2=3. " * 60 + "\\boxed{3}")
    task = Task(train=(SHORT, longest), held_out=())
    total = prompt_tokens(longest) + len(TOK.encode(longest.solution)) + 1
    check_lengths(cfg(), "sft", TOK, task, total)
    with pytest.raises(UserError) as e:
        check_lengths(cfg(), "sft", TOK, task, total - 1)
    assert str(e.value).startswith(f"SFT: problem f.jsonl:3: prompt ({prompt_tokens(longest)} tokens)")
    with pytest.raises(UserError, match="sft: problem f.jsonl:9 has no worked solution"):
        check_lengths(cfg(), "sft", TOK, Task(train=(SHORT, Problem("f.jsonl:9", "q", "1"))), 512)
    with pytest.raises(
        UserError, match="SFT judge and reflection examples: a .* example on problem f.jsonl:3"
    ):
        check_lengths(cfg("sft.judge_fraction=0.5", "sft.reflection_fraction=0.5"), "sft", TOK, task, total)

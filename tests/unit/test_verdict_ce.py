"""The teacher-forced verdict sample of ``spark.judge_ce_weight``: the model's own reasoning as
context, and only the right verdict's tokens trained."""

from types import SimpleNamespace

import pytest

from megatron_spark.data.tokenizer import load_tokenizer
from megatron_spark.rollout.protocol import Completion
from megatron_spark.spark.recycler import Item
from megatron_spark.train.spark_step import verdict_ce_sample

TOK = load_tokenizer("builtin:arith")
SESSION = SimpleNamespace(tokenizer=TOK)
PROMPT = TOK.encode_prompt("Is the answer 7 correct? Problem: Compute 3+5-2.")


def _item(label: str, choices=("Yes", "No")) -> Item:
    return Item(
        kind="pointwise", prompt="", label=label, choices=choices, step=0, source_uid="u", variant="yesno"
    )


def _completion(text: str) -> Completion:
    ids = TOK.encode(text) + [TOK.eos_id]
    return Completion(PROMPT, ids, [0.0] * len(ids), "stop")


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("3+5=8. 8-2=6. 6-7=-1. \\boxed{Yes}", "No"),
        ("3+5=8. 8-2=6. 6-7=-1. \\boxed{No}", "No"),
        ("3+5=8. A: 6-6=0. B: 6-7=-1. \\boxed{A}", "B"),
    ],
)
def test_context_is_the_own_reasoning_and_only_the_verdict_is_trained(reply, label):
    sample = verdict_ce_sample(
        SESSION, _completion(reply), _item(label, ("A", "B") if "A:" in reply else ("Yes", "No"))
    )
    assert sample.objective == "ce"
    assert sample.prompt_ids[: len(PROMPT)] == PROMPT
    context = TOK.decode(sample.prompt_ids[len(PROMPT) :])
    assert context == reply.rpartition("\\boxed{")[0] + "\\boxed{"
    assert TOK.decode(sample.response_ids) == label
    # the whole, re-encoded: the same tokens as the right reply written in one piece
    right = TOK.encode(reply.rpartition("\\boxed{")[0] + f"\\boxed{{{label}")
    assert sample.prompt_ids[len(PROMPT) :] + sample.response_ids == right


def test_a_completion_without_a_box_gives_none():
    boxed = _completion("3+5=8. 6-7=-1. \\boxed{Yes}")
    sample = verdict_ce_sample(SESSION, boxed, _item("No"))
    assert TOK.decode(sample.prompt_ids[len(PROMPT) :]) == "3+5=8. 6-7=-1. \\boxed{"
    assert verdict_ce_sample(SESSION, _completion("3+5=8. 8-2=6."), _item("No")) is None
    assert verdict_ce_sample(SESSION, _completion("\\boxed{"), _item("No")) is None


@pytest.mark.parametrize(
    "reply",
    [
        "3+5=8. 8-2=6. 6-7=-1. \\boxed{Yes}",
        "B: 6-7=-1. A: 6-6=0. \\boxed{A}",
        "\\boxed{No}",
        "x \\boxed{B} y",
    ],
)
def test_verdict_only_moves_the_check_into_the_prompt_and_keeps_the_sampled_tokens(reply):
    from megatron_spark.train.batch import Sample
    from megatron_spark.train.spark_step import verdict_only

    ids = TOK.encode(reply) + [TOK.eos_id]
    logprobs = [-0.1 * (i + 1) for i in range(len(ids))]
    sample = Sample(PROMPT, ids, logprobs, advantage=0.5, reward=1.0, weight=2.0)
    cut = verdict_only(TOK, sample)
    k = len(cut.prompt_ids) - len(PROMPT)
    assert cut.prompt_ids[: len(PROMPT)] == PROMPT
    assert cut.prompt_ids[len(PROMPT) :] + cut.response_ids == ids  # the sampled tokens, split once
    assert cut.rollout_logprobs == logprobs[k:]
    assert (cut.advantage, cut.reward, cut.weight) == (0.5, 1.0, 2.0)
    verdict = reply.rpartition("\\boxed{")[2].partition("}")[0]
    head = TOK.decode(cut.prompt_ids[len(PROMPT) :])
    assert (
        head.startswith(reply.rpartition("\\boxed{")[0].rstrip())
        and verdict not in head[len(reply.rpartition("\\boxed{")[0]) :]
    )
    assert verdict in TOK.decode(cut.response_ids)


def test_verdict_only_keeps_a_reply_without_a_box_whole():
    from megatron_spark.train.batch import Sample
    from megatron_spark.train.spark_step import verdict_only

    ids = TOK.encode("3+5=8. no verdict") + [TOK.eos_id]
    sample = Sample(PROMPT, ids, [0.0] * len(ids), advantage=-1.0)
    assert verdict_only(TOK, sample) == sample

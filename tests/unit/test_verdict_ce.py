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
        SESSION, [_completion(reply)], _item(label, ("A", "B") if "A:" in reply else ("Yes", "No"))
    )
    assert sample.objective == "ce"
    assert sample.prompt_ids[: len(PROMPT)] == PROMPT
    context = TOK.decode(sample.prompt_ids[len(PROMPT) :])
    assert context == reply.rpartition("\\boxed{")[0] + "\\boxed{"
    assert TOK.decode(sample.response_ids) == label
    # the whole, re-encoded: the same tokens as the right reply written in one piece
    right = TOK.encode(reply.rpartition("\\boxed{")[0] + f"\\boxed{{{label}")
    assert sample.prompt_ids[len(PROMPT) :] + sample.response_ids == right


def test_first_completion_with_a_box_is_used_and_none_without_one():
    unboxed, boxed = _completion("3+5=8. 8-2=6."), _completion("3+5=8. 6-7=-1. \\boxed{Yes}")
    sample = verdict_ce_sample(SESSION, [unboxed, boxed], _item("No"))
    assert TOK.decode(sample.prompt_ids[len(PROMPT) :]) == "3+5=8. 6-7=-1. \\boxed{"
    assert verdict_ce_sample(SESSION, [unboxed, _completion("\\boxed{")], _item("No")) is None

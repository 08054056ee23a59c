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


@pytest.mark.parametrize("judge_reward", ["verdict", "checked"])
def test_checked_reward_takes_verdict_targets_only_after_a_right_check(judge_reward):
    import dataclasses

    import torch

    from megatron_spark.spark.config import SparkConfig
    from megatron_spark.train.config import GRPOConfig
    from megatron_spark.train.spark_step import item_samples

    check = "3+5=8. 8-2=6. 6 vs 7: different."
    replies = [
        "3+5=8. 8-2=5. 5 vs 7: different. \\boxed{No}",  # wrong check, right verdict
        "3+5=8. 8-2=6. 6 vs 7: equal. \\boxed{Yes}",  # wrong check, wrong verdict
        f"{check} \\boxed{{Yes}}",  # right check, wrong verdict
        f"{check} \\boxed{{No}}",  # right check, right verdict
    ]
    spark = SparkConfig(
        enabled=True,
        num_samples_per_item=4,
        judge_ce_weight=1.0,
        judge_ce_samples=4,
        judge_reward=judge_reward,
    )
    cfg = SimpleNamespace(spark=spark, grpo=GRPOConfig())
    session = SimpleNamespace(tokenizer=TOK, cfg=cfg)
    item = dataclasses.replace(_item("No"), check=check)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0] if judge_reward == "verdict" else [0.0, 0.0, 0.0, 1.0]])
    groups, kinds = item_samples(session, [item], [_completion(r) for r in replies], rewards)
    assert kinds == ["pointwise", "verdict_ce"]
    contexts = [TOK.decode(x.prompt_ids[len(PROMPT) :]) for x in groups[1]]
    trained = [r.rpartition("\\boxed{")[0] + "\\boxed{" for r in replies]
    assert contexts == (trained if judge_reward == "verdict" else trained[2:])
    assert all(TOK.decode(x.response_ids) == "No" for x in groups[1])


def _session(**spark):
    from megatron_spark.spark.config import SparkConfig
    from megatron_spark.train.config import GRPOConfig

    cfg = SimpleNamespace(spark=SparkConfig(enabled=True, **spark), grpo=GRPOConfig())
    return SimpleNamespace(tokenizer=TOK, cfg=cfg)


CHECK = "3+5=8. 8-2=6. 6 vs 7: different."


@pytest.mark.parametrize(
    ("reply", "kept"),
    [
        ("3+5=8. 8-2=6. 6 vs 7: equal. \\boxed{Yes}", "3+5=8. 8-2=6. 6 vs 7:"),  # " e" is one token
        ("3+5=8. 8-2=5. 5 vs 7: different. \\boxed{No}", "3+5=8. 8-2="),  # a step's value
        ("3+5=8. 8-2=6. 6 vs 7: different.", CHECK),  # the check without a box
        ("\\boxed{No}", ""),  # no check at all
        ("", ""),  # nothing
        ("x" * 200, ""),  # nothing alike, long
    ],
)
def test_a_check_correction_keeps_the_sample_up_to_its_slip_and_trains_the_rest(reply, kept):
    import dataclasses

    from megatron_spark.train.spark_step import check_ce_sample

    item = dataclasses.replace(_item("No"), check=CHECK)
    sample = check_ce_sample(_session(), _completion(reply), item)
    assert sample.objective == "ce" and sample.prompt_ids[: len(PROMPT)] == PROMPT
    context = TOK.decode(sample.prompt_ids[len(PROMPT) :])
    assert context == kept  # cut at the last token boundary before the first difference
    assert context + TOK.decode(sample.response_ids) == f"{CHECK} \\boxed{{No"


def test_a_sample_that_already_wrote_the_whole_reply_needs_no_correction():
    import dataclasses

    from megatron_spark.train.spark_step import check_ce_sample

    item = dataclasses.replace(_item("No"), check=CHECK)
    # the worked reply, then a second box: its last box's check is wrong, but nothing is left to teach
    reply = f"{CHECK} \\boxed{{No}} \\boxed{{Yes}}"
    assert check_ce_sample(_session(), _completion(reply), item) is None


@pytest.mark.parametrize("correct_check", [False, True])
def test_corrections_replace_the_verdict_copies_only_when_no_sample_writes_the_check(correct_check):
    import dataclasses

    import torch

    from megatron_spark.train.spark_step import item_samples

    session = _session(
        num_samples_per_item=3,
        judge_ce_weight=1.0,
        judge_ce_samples=2,
        judge_reward="checked",
        judge_ce_correct_check=correct_check,
    )
    item = dataclasses.replace(_item("No"), check=CHECK)
    blind = ["3+5=8. 8-2=6. 6 vs 7: equal. \\boxed{Yes}"] * 2 + ["3+5=8. 8-2=5. 5 vs 7: equal. \\boxed{Yes}"]
    seen = [blind[0], blind[2], f"{CHECK} \\boxed{{Yes}}"]
    completions = [_completion(r) for r in blind + seen]
    groups, kinds = item_samples(session, [item, item], completions, torch.zeros(2, 3))
    if not correct_check:  # the blind item teaches nothing; the other gets its verdict copy
        assert kinds == ["pointwise", "pointwise", "verdict_ce"]
        assert [TOK.decode(x.response_ids) for x in groups[2]] == ["No"]
        return
    assert kinds == ["pointwise", "check_ce", "pointwise", "verdict_ce"]
    fixes = groups[1]
    assert len(fixes) == 2  # judge_ce_samples of them, from the first samples
    assert [TOK.decode(x.response_ids) for x in fixes] == [" different. \\boxed{No"] * 2


def test_check_corrections_need_checked_rewards_and_a_cross_entropy_weight():
    from megatron_spark.spark.config import SparkConfig

    with pytest.raises(ValueError, match="judge_ce_correct_check needs judge_reward: checked"):
        SparkConfig(judge_ce_correct_check=True, judge_ce_weight=1.0)
    with pytest.raises(ValueError, match="judge_ce_weight: 0.0"):
        SparkConfig(judge_ce_correct_check=True, judge_reward="checked")
    SparkConfig(judge_ce_correct_check=True, judge_reward="checked", judge_ce_weight=0.5)

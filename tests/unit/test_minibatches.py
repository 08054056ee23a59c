"""How one update's groups are split into optimizer steps (``grpo.minibatches``)."""

import pytest

from megatron_spark.train.batch import Sample, build_micro_batches
from megatron_spark.train.grpo import minibatches
from megatron_spark.train.loss import token_counts


def _group(tag: int, size: int, objective: str = "rl") -> list[Sample]:
    return [Sample([tag], [tag, tag], objective=objective, advantage=float(tag)) for _ in range(size)]


def _joint_step(num_policy=32, num_items=20):
    """A SPARK joint step's groups, in the order the step builds them: the policy's groups, then
    per judge item its RL group and its one-sample verdict cross-entropy group."""
    groups = [_group(1, 8) for _ in range(num_policy)]
    kinds = ["policy"] * num_policy
    for _ in range(num_items):
        groups += [_group(2, 8), _group(3, 1, "ce")]
        kinds += ["pointwise", "verdict_ce"]
    return groups, kinds


def test_without_kinds_the_split_is_contiguous_and_in_order():
    groups = [_group(i, 2) for i in range(7)]
    chunks = minibatches(groups, 3)
    assert [[int(x.advantage) for x in c] for c in chunks] == [[0, 0, 1, 1], [2, 2, 3, 3, 4, 4], [5, 5, 6, 6]]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_with_kinds_every_step_holds_its_share_of_each_kind(k):
    groups, kinds = _joint_step()
    chunks = minibatches(groups, k, kinds)
    assert len(chunks) == k
    assert sorted(id(x) for c in chunks for x in c) == sorted(id(x) for g in groups for x in g)
    for tag, n in ((1, 32 * 8), (2, 20 * 8), (3, 20)):
        per_chunk = [sum(int(x.advantage) == tag for x in c) for c in chunks]
        group_size = 8 if tag != 3 else 1  # chunks are equal in groups: a kind's share may be off by two
        assert max(per_chunk) - min(per_chunk) <= 2 * group_size, (tag, per_chunk)
        assert sum(per_chunk) == n


def test_with_kinds_the_number_of_steps_does_not_drop_with_small_kinds():
    # data-parallel ranks must agree on the number of optimizer steps: min(k, number of groups)
    groups = [_group(1, 2), _group(2, 2), _group(3, 1, "ce")]
    assert len(minibatches(groups, 2, ["a", "b", "c"])) == 2
    assert len(minibatches(groups, 3, ["a", "b", "c"])) == 3
    with pytest.raises(ValueError, match="2 kinds for 3 groups"):
        minibatches(groups, 2, ["a", "b"])


def test_verdict_tokens_weigh_alike_in_every_step_only_when_split_by_kind():
    # The loss divides the cross-entropy by the step's CE token count: split in order, the first
    # step holds the policy groups and a couple of CE samples, whose tokens then weigh ~9x more.
    groups, kinds = _joint_step()

    def ce_weight_per_token(chunks):
        return [1.0 / float(token_counts(build_micro_batches(c, 8192))[1]) for c in chunks]

    in_order = ce_weight_per_token(minibatches(groups, 2))
    by_kind = ce_weight_per_token(minibatches(groups, 2, kinds))
    assert max(in_order) / min(in_order) == 9.0  # 2 vs 18 verdict samples
    assert by_kind[0] == by_kind[1]

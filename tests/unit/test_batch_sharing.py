"""build_micro_batches with share_prompts: which samples share, and the head rows' layout."""

import pytest

from megatron_spark.errors import UserError
from megatron_spark.train.batch import Sample, build_micro_batches, prompt_units


def _samples():
    a, b = list(range(1, 11)), list(range(20, 24))  # prompts of 10 and 4 tokens
    return [Sample(a, [100 + i] * 8) for i in range(4)] + [Sample(b, [200, 201, 202]), Sample(a, [300, 301])]


def test_units_are_runs_of_one_prompt_cut_at_the_budget():
    s = _samples()
    # 10 + 8 + 8 = 26 fits 30, a third response would not; the last sample's prompt equals the
    # first group's but is not next to it.
    assert prompt_units(s, 30, share_prompts=True) == [[0, 1], [2, 3], [4], [5]]
    assert prompt_units(s, 4096, share_prompts=True) == [[0, 1, 2, 3], [4], [5]]
    assert prompt_units(s, 4096, share_prompts=False) == [[i] for i in range(6)]


@pytest.mark.parametrize("share", [True, False])
def test_head_rows_read_the_position_before_each_response_token(share):
    s = _samples()
    mbs = build_micro_batches(s, 30, share_prompts=share)
    assert sorted(i for mb in mbs for i in mb.sample_ids) == list(range(6))
    for mb in mbs:
        b = mb.batch
        assert b.num_tokens <= 30
        assert (b.prefix_of is not None) == (share and any(p >= 0 for p in b.prefix_of or []))
        positions = b.position_ids()
        for i, (lo, hi) in zip(mb.sample_ids, mb.spans):
            prompt, resp = s[i].prompt_ids, s[i].response_ids
            rows = b.head_index[lo:hi]
            assert b.head_targets[lo:hi].tolist() == resp
            # The first response token is predicted from the prompt's last token (at its place in
            # the prompt), every later one from the response token before it.
            assert int(b.tokens[rows[0]]) == prompt[-1] and int(positions[rows[0]]) == len(prompt) - 1
            assert b.tokens[rows[1:]].tolist() == resp[:-1]
            assert positions[rows].tolist() == list(range(len(prompt) - 1, len(prompt) + len(resp) - 1))
        # One head row per response token, nothing else (every row carries a loss).
        assert b.num_head_rows == sum(len(s[i].response_ids) for i in mb.sample_ids) == len(mb.rl_mask)
    whole = sum(mb.batch.num_tokens for mb in build_micro_batches(s, 30, share_prompts=False))
    shared = sum(mb.batch.num_tokens for mb in build_micro_batches(s, 30, share_prompts=True))
    assert whole - shared == 2 * 10  # the first group's prompt is held twice instead of four times


def test_a_sample_over_the_budget_is_refused_with_or_without_sharing():
    for share in (True, False):
        with pytest.raises(UserError, match="a sample of 18 tokens exceeds train.micro_batch_tokens=17"):
            build_micro_batches(_samples(), 17, share_prompts=share)

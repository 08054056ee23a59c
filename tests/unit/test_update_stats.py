"""UpdateStats: sums over optimizer steps and phases, the first update's log-prob gap."""

from __future__ import annotations

import dataclasses

import pytest

from megatron_spark.train.stats import UpdateStats


def _step(**kw) -> UpdateStats:
    base = dict(
        loss=0.5, rl_tokens=10.0, entropy_sum=3.0, clipped=1.0, kl_sum=0.2, gap_sum=0.4, gap_tokens=10.0
    )
    return UpdateStats(**{**base, **kw}, grad_norm=2.0, lr=1e-3, steps=1.0, applied=1.0)


def test_adding_sums_every_field_but_keeps_the_first_updates_gap():
    a, b = _step(), _step(loss=1.5, rl_tokens=30.0, gap_sum=9.0, gap_tokens=30.0)
    total = UpdateStats() + a + b
    assert total.loss == 2.0 and total.rl_tokens == 40.0 and total.steps == 2.0 and total.applied == 2.0
    assert total.grad_norm == 4.0 and total.lr == 2e-3
    assert (total.gap_sum, total.gap_tokens) == (0.4, 10.0)  # a's: before any update of the step
    assert (b + a).gap_sum == 9.0  # order matters: the gap is the first phase's


def test_metrics_are_per_token_and_per_step_averages():
    t = dataclasses.replace(UpdateStats() + _step() + _step(), all_rl_tokens=25.0)
    m = t.metrics()
    assert m["train/loss"] == pytest.approx(0.5)
    assert m["train/entropy"] == pytest.approx(6.0 / 20.0)
    assert m["train/clip_fraction"] == pytest.approx(2.0 / 20.0)
    assert m["train/kl_ref"] == pytest.approx(0.4 / 20.0)
    assert m["train/grad_norm"] == pytest.approx(2.0)
    assert m["train/logprob_gap_rollout_vs_train"] == pytest.approx(0.04)
    assert m["train/skipped_token_fraction"] == pytest.approx(5.0 / 25.0)


def test_metrics_of_no_step_are_zero_not_a_division_error():
    assert set(UpdateStats().metrics().values()) == {0.0}

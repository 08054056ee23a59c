"""The loop learns: a short SFT warm start raises held-out accuracy from zero, and GRPO then raises
the reward on its training prompts.

GRPO runs on a small fixed problem set (a jsonl file, so the dataset path is exercised too): on a
set revisited every step the reward must climb within a few steps, which keeps the test short and
its outcome far from noise. The full-length learning target (held-out accuracy, 10 minutes) is the
demo's (``megatron-spark demo``; numbers in docs/training.md).
"""

import math

import pytest

from tests.conftest import FIXED_TASK, REPO, fixed_set_grpo_args, read_metrics, run_cli


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A 100-step SFT run on the small task; its run directory."""
    sft = tmp_path_factory.mktemp("learning") / "sft"
    run_cli(
        [
            "sft",
            str(REPO / "examples/tiny_arith/sft.yaml"),
            f"run_dir={sft}",
            "train.num_steps=100",
            "train.eval_every_steps=0",
            "train.eval_num_problems=100",
            *FIXED_TASK,
        ],
        check=True,
        timeout=600,
    )
    return sft


def test_sft_then_grpo_raises_reward(sft, tmp_path):
    evals = [m["eval/accuracy"] for m in read_metrics(sft) if "eval/accuracy" in m]
    assert evals[0] == 0.0 and evals[-1] >= 0.1, evals

    grpo = tmp_path / "grpo"
    args = fixed_set_grpo_args(tmp_path, grpo, sft / "checkpoints/step_000100", num_steps=12)
    run_cli(args, check=True, timeout=600)
    rewards = [m["policy/reward_mean"] for m in read_metrics(grpo) if "policy/reward_mean" in m]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards


def test_skipping_zero_advantage_samples_changes_nothing_but_the_work(sft, tmp_path):
    """grpo.skip_zero_advantage (on by default) leaves the groups whose rewards are all equal out
    of the forward and backward passes. Their tokens add exactly 0 to the loss and its gradient
    and still count in its divisor, so both runs take the same updates (up to float rounding),
    hence sample the same answers and earn the same rewards, step after step."""
    runs = {}
    for skip in (True, False):
        run_dir = tmp_path / f"skip_{skip}"
        args = fixed_set_grpo_args(tmp_path, run_dir, sft / "checkpoints/step_000100", num_steps=4)
        run_cli([*args, f"grpo.skip_zero_advantage={skip}"], check=True, timeout=600)
        runs[skip] = [m for m in read_metrics(run_dir) if "policy/reward_mean" in m]
    on, off = runs[True], runs[False]
    assert len(on) == len(off) == 4
    assert sum(m["train/skipped_token_fraction"] for m in on) > 0  # some groups were skipped
    assert all(m["train/skipped_token_fraction"] == 0 for m in off)
    assert [m["policy/zero_advantage_groups"] for m in on] == [m["policy/zero_advantage_groups"] for m in off]
    for a, b in zip(on, off):
        assert a["policy/reward_mean"] == b["policy/reward_mean"], (on, off)
        for key in ("train/loss", "train/grad_norm"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-7), (key, a[key], b[key])
        assert a["train/logprob_gap_rollout_vs_train"] < 1e-5

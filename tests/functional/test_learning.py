"""The loop learns: a short SFT warm start raises held-out accuracy from zero, and GRPO then raises
the reward on its training prompts.

GRPO runs on a small fixed problem set (a jsonl file, so the dataset path is exercised too): on a
set revisited every step the reward must climb within a few steps, which keeps the test short and
its outcome far from noise. The full-length learning target (held-out accuracy, 10 minutes) is the
demo's (``megatron-spark demo``; numbers in docs/training.md).
"""

from tests.conftest import FIXED_TASK, REPO, fixed_set_grpo_args, read_metrics, run_cli


def test_sft_then_grpo_raises_reward(tmp_path):
    sft = tmp_path / "sft"
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
    evals = [m["eval/accuracy"] for m in read_metrics(sft) if "eval/accuracy" in m]
    assert evals[0] == 0.0 and evals[-1] >= 0.1, evals

    grpo = tmp_path / "grpo"
    args = fixed_set_grpo_args(tmp_path, grpo, sft / "checkpoints/step_000100", num_steps=12)
    run_cli(args, check=True, timeout=600)
    rewards = [m["policy/reward_mean"] for m in read_metrics(grpo) if "policy/reward_mean" in m]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards

"""The loop learns: a short SFT warm start raises held-out accuracy from zero, and GRPO then raises
the reward on its training prompts.

GRPO runs on a small fixed problem set (a jsonl file, so the dataset path is exercised too): on a
set revisited every step the reward must climb within a few steps, which keeps the test short and
its outcome far from noise. The full-length learning target (held-out accuracy, 10 minutes) is the
demo's (``megatron-spark demo``; numbers in docs/training.md).
"""

import json

from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask
from tests.conftest import REPO, run_cli

TASK = [
    "task.arithmetic.min_operands=3",
    "task.arithmetic.max_operands=3",
    "task.arithmetic.max_digits=1",
]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
            *TASK,
        ],
        check=True,
        timeout=600,
    )
    evals = [m["eval/accuracy"] for m in metrics(sft) if "eval/accuracy" in m]
    assert evals[0] == 0.0 and evals[-1] >= 0.1, evals

    problems = [
        ArithmeticTask(ArithmeticConfig(min_operands=3, max_operands=3, max_digits=1)).train_problem(i)
        for i in range(8)
    ]
    data = tmp_path / "fixed.jsonl"
    data.write_text("".join(json.dumps({"q": p.prompt, "a": p.answer}) + "\n" for p in problems))
    grpo = tmp_path / "grpo"
    run_cli(
        [
            "train",
            str(REPO / "examples/tiny_arith/grpo.yaml"),
            f"run_dir={grpo}",
            f"model.init={sft}/checkpoints/step_000100",
            "task.kind=file",
            f"task.file={{train_path: {data}, held_out_fraction: 0.0, prompt_key: q, answer_key: a}}",
            "train.num_steps=12",
            "train.num_prompts_per_step=8",
            "train.eval_every_steps=0",
            "train.eval_num_problems=8",
            "train.save_every_steps=0",
            "optim.lr=3e-4",
            "optim.warmup_steps=3",
        ],
        check=True,
        timeout=600,
    )
    rewards = [m["policy/reward_mean"] for m in metrics(grpo) if "policy/reward_mean" in m]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards

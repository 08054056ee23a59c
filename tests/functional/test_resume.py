"""A run killed with SIGKILL and resumed from its latest checkpoint records what an uninterrupted
run records, bit for bit (every metric but wall-clock ones), and ends with the same weights.

The reward is a user function that gives partial credit from the first step, so every step
changes the weights and the optimizer state: a resume that lost any of them would show.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from tests.conftest import REPO, _env, run_cli

NUM_STEPS = 6
KILL_AFTER_STEP = 3

CONFIG = {
    "seed": 0,
    "model": {"init": "preset:tiny-llama", "tokenizer": "builtin:arith"},
    "task": {
        "kind": "arithmetic",
        "arithmetic": {"max_digits": 1, "min_operands": 2, "max_operands": 2, "held_out_size": 16},
        "verifier": {"kind": "function", "function": "contains_reward:reward"},
    },
    "rollout": {"num_samples_per_prompt": 4, "max_new_tokens": 16},
    # Two optimizer steps per rollout batch: the second sees a ratio != 1 (clipping can act).
    "grpo": {"num_minibatches": 2},
    "optim": {"lr": 1e-3},
    "train": {
        "num_steps": NUM_STEPS,
        "num_prompts_per_step": 8,
        "eval_num_problems": 16,
        "micro_batch_tokens": 2048,
        "save_every_steps": 1,
        "keep_checkpoints": 2,
    },
}

REWARD = """
def reward(response, answer):
    return 1.0 if answer in response else 0.0
"""

WALL_CLOCK = ("time/", "perf/")


def start(config: Path, run_dir: Path, reward_dir: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """``megatron-spark train CONFIG run_dir=RUN_DIR EXTRA`` in the background; output to a log."""
    env = _env()
    env["PYTHONPATH"] = f"{reward_dir}{os.pathsep}{env['PYTHONPATH']}"
    log = run_dir.parent / f"{run_dir.name}{'-resumed' if extra else ''}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "megatron_spark.cli", "train", str(config), f"run_dir={run_dir}", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    return proc, log


def finish(proc: subprocess.Popen, log: Path) -> None:
    rc = proc.wait(timeout=300)
    assert rc == 0, f"{' '.join(proc.args)} exited {rc}:\n{log.read_text()[-4000:]}"


def latest_step(run_dir: Path) -> int | None:
    pointer = run_dir / "checkpoints" / "latest"
    try:
        return int(pointer.read_text().strip().removeprefix("step_"))
    except (FileNotFoundError, ValueError):
        return None


def final_weights(run_dir: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """The tensors of the run's last checkpoint (its dist-checkpoint metadata is not byte-stable)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = scratch / f"{run_dir.name}.pt"
    dcp_to_torch_save(run_dir / "checkpoints" / f"step_{NUM_STEPS:06d}" / "model", out)
    return {k: v for k, v in torch.load(out, weights_only=False).items() if isinstance(v, torch.Tensor)}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def deterministic(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(WALL_CLOCK)}


def first_difference(a: list[dict], b: list[dict]) -> str | None:
    for ra, rb in zip(a, b):
        da, db = deterministic(ra), deterministic(rb)
        for key in sorted(set(da) | set(db)):
            if da.get(key) != db.get(key):
                return f"step {ra['step']}: {key} uninterrupted={da.get(key)!r} resumed={db.get(key)!r}"
    return None


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    check_resume(tmp_path, CONFIG)


def test_spark_resume_after_sigkill_equals_uninterrupted(tmp_path):
    """The same for SPARK's joint schedule: the item queue, the frozen held-out judge pool and the
    recycling randomness must survive the kill (items are built from the first step on, because
    a short warm start already boxes its answers)."""
    warm = tmp_path / "warm"
    run_cli(
        [
            "sft",
            str(REPO / "examples/tiny_arith/sft_spark.yaml"),
            f"run_dir={warm}",
            "train.num_steps=40",
            "train.eval_num_problems=0",
            "task.arithmetic.min_operands=2",
            "task.arithmetic.max_operands=2",
            "task.arithmetic.held_out_size=16",
        ],
        check=True,
    )
    config = {
        **CONFIG,
        "model": {"init": str(warm / "checkpoints" / "step_000040"), "tokenizer": "builtin:arith"},
        "task": {**CONFIG["task"], "verifier": {"kind": "math"}},
        "rollout": {"num_samples_per_prompt": 4, "max_new_tokens": 24},
        "optim": {"lr": 1e-4},
        "spark": {"enabled": True, "items_per_step": 8, "num_samples_per_item": 4, "max_new_tokens": 48},
        "train": {**CONFIG["train"], "eval_judge": True, "eval_num_problems": 8, "micro_batch_tokens": 4096},
    }
    a = check_resume(tmp_path, config)
    steps = [r for r in a if "spark/queue_size" in r]
    assert sum(r["spark/items_trained/pointwise"] + r["spark/items_trained/pairwise"] for r in steps) > 0
    assert sum(r["spark/items_trained/reflection"] for r in steps) > 0


def check_resume(tmp_path: Path, config_dict: dict) -> list[dict]:
    """Run CONFIG twice, one run killed after step KILL_AFTER_STEP and resumed; compare."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_dict))
    (tmp_path / "contains_reward.py").write_text(REWARD)
    run_a, run_b = tmp_path / "uninterrupted", tmp_path / "killed"

    # Both first legs at once (they do not interact); B is killed as soon as it has checkpointed
    # step KILL_AFTER_STEP, wherever it is in the next step.
    proc_a, log_a = start(config, run_a, tmp_path)
    proc_b, _ = start(config, run_b, tmp_path)
    try:
        deadline = time.monotonic() + 300
        while (latest_step(run_b) or 0) < KILL_AFTER_STEP:
            assert proc_b.poll() is None, f"run B exited {proc_b.returncode} before step {KILL_AFTER_STEP}"
            assert time.monotonic() < deadline, "run B never checkpointed"
            time.sleep(0.05)
        proc_b.send_signal(signal.SIGKILL)
        assert proc_b.wait(timeout=60) == -signal.SIGKILL, "run B finished before the kill"
    finally:
        if proc_b.poll() is None:
            proc_b.kill()
    resumed_from = latest_step(run_b)
    assert KILL_AFTER_STEP <= resumed_from < NUM_STEPS

    finish(*start(config, run_b, tmp_path, "--resume"))
    finish(proc_a, log_a)

    a, b = records(run_a), records(run_b)
    assert [r["step"] for r in a] == list(range(NUM_STEPS + 1))
    assert [r["step"] for r in b] == list(range(NUM_STEPS + 1)), "steps missing or repeated"
    # The policy changed: a resume that dropped weights or optimizer state could not agree below.
    assert any(r["train/grad_norm"] > 0 for r in a[1:])
    difference = first_difference(a[resumed_from + 1 :], b[resumed_from + 1 :])
    assert difference is None, f"resumed from step {resumed_from}; first difference at {difference}"
    assert first_difference(a, b) is None  # and before the kill, both were the same run

    # The final weights, bit for bit.
    weights_a, weights_b = (final_weights(run, tmp_path) for run in (run_a, run_b))
    assert weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name
    return a

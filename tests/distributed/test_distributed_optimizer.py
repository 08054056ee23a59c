"""The distributed optimizer (``optim.distributed``, ZeRO-1 over the DP ranks) at DP=2 on gloo:
the same losses and gradient norms as the replicated optimizer, each rank holding about half of
the Adam state, and a resume from its per-rank shards equal to the uninterrupted run."""

import json
import shutil

import pytest

from megatron_spark.checkpoint import safe_state
from tests.conftest import run_torchrun

pytestmark = pytest.mark.distributed
STEPS = 6


def _sft(run_dir, distributed: bool, *extra: str) -> dict[int, dict]:
    run_torchrun(
        2,
        [
            "-m",
            "megatron_spark.cli",
            "sft",
            "examples/tiny_arith/sft.yaml",
            f"run_dir={run_dir}",
            f"train.num_steps={STEPS}",
            "train.eval_every_steps=0",
            "train.save_every_steps=3",
            f"optim.distributed={str(distributed).lower()}",
            *extra,
        ],
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r for r in rows if "train/loss" in r}  # the last record of each step


def _adam_elements(run_dir, rank: int) -> int:
    state = safe_state.load(run_dir / f"checkpoints/step_{STEPS:06d}/train_state/rank_{rank:05d}")
    return sum(s["exp_avg"].numel() for s in state["optimizer"]["adam"]["state"].values())


def test_distributed_optimizer_equals_replicated_and_resumes(tmp_path):
    replicated = _sft(tmp_path / "replicated", False)
    sharded = _sft(tmp_path / "sharded", True)
    assert sorted(sharded) == sorted(replicated) == list(range(1, STEPS + 1))
    for step, r in replicated.items():
        s = sharded[step]
        assert abs(s["train/loss"] - r["train/loss"]) <= 1e-6 * r["train/loss"], step
        assert abs(s["train/grad_norm"] - r["train/grad_norm"]) <= 1e-9 * r["train/grad_norm"], step

    # Each replicated rank holds the whole Adam state; the two shards split it between them.
    whole = _adam_elements(tmp_path / "replicated", 0)
    assert _adam_elements(tmp_path / "replicated", 1) == whole
    halves = [_adam_elements(tmp_path / "sharded", rank) for rank in (0, 1)]
    assert sum(halves) == whole and max(halves) < 0.6 * whole, (halves, whole)

    # Resume from the sharded run's step-3 checkpoint: steps 4..6 as uninterrupted, bit for bit.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "sharded", resumed)
    shutil.rmtree(resumed / f"checkpoints/step_{STEPS:06d}")
    (resumed / "checkpoints/latest").write_text("step_000003\n")
    after = _sft(resumed, True, "--resume")
    for step in range(4, STEPS + 1):
        for key in ("train/loss", "train/grad_norm", "train/lr"):
            assert after[step][key] == sharded[step][key], (step, key)

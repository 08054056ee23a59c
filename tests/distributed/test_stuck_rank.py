"""A rank that stops (SIGSTOP) under torchrun ends the job within ``parallel.collective_timeout_s``
(set to 10 s here), with one line from the rank that waited, instead of hanging it: the timeout
applies to megatron's process groups as well as to the default one (megatron's own default is 30
minutes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, _env, free_port

pytestmark = pytest.mark.distributed

TIMEOUT_S = 10
CONFIG = {
    "model": {"init": "preset:tiny-llama", "tokenizer": "builtin:arith"},
    "task": {"arithmetic": {"max_digits": 1, "min_operands": 2, "max_operands": 2, "held_out_size": 8}},
    "rollout": {"num_samples_per_prompt": 4, "max_new_tokens": 16},
    "train": {
        "num_steps": 500,
        "num_prompts_per_step": 8,
        "eval_num_problems": 8,
        "micro_batch_tokens": 2048,
    },
    "parallel": {"collective_timeout_s": TIMEOUT_S},
}


def worker(torchrun_pid: int, local_rank: int) -> int:
    """The pid of torchrun's worker with ``local_rank`` (from the workers' environments)."""
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"LOCAL_RANK={local_rank}".encode() in env:
            return pid
    raise AssertionError(f"no worker with LOCAL_RANK={local_rank} among {children}")


def test_a_stopped_rank_ends_the_job_within_the_timeout(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    env = {**_env(), "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "5"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
    ]
    proc = subprocess.Popen(
        [*cmd, "-m", "megatron_spark.cli", "train", str(config), f"run_dir={run}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    stopped = None
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.jsonl").is_file():  # both ranks are in the training loop
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        stopped = worker(proc.pid, 1)
        os.kill(stopped, signal.SIGSTOP)
        start = time.monotonic()
        _, err = proc.communicate(timeout=TIMEOUT_S + 120)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):  # torchrun killed it already
                os.kill(stopped, signal.SIGKILL)
    assert proc.returncode != 0
    mine = [line for line in err.splitlines() if line.startswith("megatron-spark: error: ")]
    assert mine == [
        "megatron-spark: error: rank 0: a collective got no answer from another rank within "
        f"parallel.collective_timeout_s={TIMEOUT_S} s (a rank stopped, hung or died); ending the job"
    ], err[-4000:]
    assert "Traceback" not in "\n".join(line for line in err.splitlines() if line.startswith("[rank0]"))
    # The waiting rank gives up after TIMEOUT_S; torchrun then kills the stopped one (it waits up
    # to its shutdown timeout, 30 s unless told, for it to exit on SIGTERM).
    assert took < TIMEOUT_S + 45, f"the job took {took:.0f} s to end"

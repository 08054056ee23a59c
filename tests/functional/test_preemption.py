"""Preemption and full disks (docs/training.md, "Signals and exit statuses").

* SIGTERM in the middle of a step (twice, as SLURM and torchrun both send it): the step finishes,
  a checkpoint is written, one line names it, the exit status is 143; ``--resume`` then records
  what an uninterrupted run records, bit for bit, and ends with the same weights.
* SIGINT alone stops the same way (130); a second signal a moment later exits at once.
* A disk that fills during a save: the write error is the one line reported, the partial
  checkpoint is gone and ``latest`` names the previous, intact one. On a real tmpfs where this
  machine lets the test mount one, else through a writer that fails like a full disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from megatron_spark.checkpoint import steps as ckpt
from tests.conftest import REPO, _env
from tests.edges import cli, refused
from tests.functional.test_resume import CONFIG, NUM_STEPS, REWARD, final_weights, first_difference, records

SLOW_REWARD = """
import os
import time

def reward(response, answer):
    # One byte per call in calls-<pid> beside this file: a test can see a step's rewards begin.
    with open(os.path.join(os.path.dirname(__file__), f"calls-{os.getpid()}"), "ab") as f:
        f.write(b".")
    time.sleep(0.2)
    return 1.0 if answer in response else 0.0
"""


def popen(config: Path, run_dir: Path, pythonpath: Path, *extra: str) -> subprocess.Popen:
    env = _env()
    env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env['PYTHONPATH']}"
    return subprocess.Popen(
        [sys.executable, "-m", "megatron_spark.cli", "train", str(config), f"run_dir={run_dir}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    """Until ``metrics.jsonl`` has recorded ``step`` (the next step is then under way)."""
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while True:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{proc.communicate()[1][-4000:]}"
        assert time.monotonic() < deadline, f"step {step} never recorded"
        if path.is_file():
            done = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
            if done and done[-1] >= step:
                return
        time.sleep(0.02)


def wait_inside_step_1(proc: subprocess.Popen, run_dir: Path, reward_dir: Path) -> None:
    """Until the run is inside step 1: step 0 is logged and a reward of step 1 has been asked for
    (SLOW_REWARD counts its calls). Step 0's metrics line comes before the step-boundary check,
    so a signal sent when the line appears can still stop the run after step 0, at once, with
    nothing to checkpoint (it did, in CI)."""
    wait_for_step(proc, run_dir, 0)
    calls = reward_dir / f"calls-{proc.pid}"
    before = calls.stat().st_size if calls.is_file() else 0  # step 0's held-out rewards
    deadline = time.monotonic() + 300
    while not (calls.is_file() and calls.stat().st_size > before):
        assert proc.poll() is None, f"exited {proc.returncode}:\n{proc.communicate()[1][-4000:]}"
        assert time.monotonic() < deadline, "step 1 never asked for a reward"
        time.sleep(0.02)


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_sigterm_mid_step_checkpoints_and_resume_is_bitwise_identical(tmp_path):
    config = tmp_path / "config.yaml"
    # No periodic checkpoint: the one the interrupted run resumes from is the signal's.
    config.write_text(yaml.safe_dump({**CONFIG, "train": {**CONFIG["train"], "save_every_steps": 0}}))
    (tmp_path / "contains_reward.py").write_text(REWARD)
    run_a, run_b = tmp_path / "uninterrupted", tmp_path / "preempted"
    proc_a = popen(config, run_a, tmp_path)
    proc_b = popen(config, run_b, tmp_path)
    try:
        wait_for_step(proc_b, run_b, 2)
        proc_b.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc_b.send_signal(signal.SIGTERM)  # the launcher's copy of the same request
        _, err = proc_b.communicate(timeout=120)
    finally:
        proc_b.kill()
    assert proc_b.returncode == 143, err[-4000:]
    stopped = ckpt.step_of(Path((run_b / "checkpoints/latest").read_text().strip()))
    # Step 2 was logged when the signal went out; the run ends the step it is in: step 3, or
    # step 2 itself when the signal lands between its metrics line and the end of its loop
    # iteration (seen on a loaded machine).
    assert 2 <= stopped < NUM_STEPS, stopped
    lines = stderr_lines(err)
    assert "Traceback" not in err
    assert lines[-1] == (
        f"megatron-spark: stopped by SIGTERM after step {stopped}: checkpoint "
        f"{run_b}/checkpoints/step_{stopped:06d}; continue with --resume"
    ), lines
    assert len(lines) == 2 and "received SIGTERM" in lines[0], lines
    summary = json.loads((run_b / "summary.json").read_text())
    assert summary["status"] == "SIGTERM" and summary["step"] == stopped
    assert [r["step"] for r in records(run_b)] == list(range(stopped + 1))

    resumed = cli(["train", config, f"run_dir={run_b}", "--resume"], pythonpath=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    out_a, err_a = proc_a.communicate(timeout=300)
    assert proc_a.returncode == 0, err_a[-4000:]

    a, b = records(run_a), records(run_b)
    assert [r["step"] for r in b] == list(range(NUM_STEPS + 1)), "steps missing or repeated"
    assert any(r["train/grad_norm"] > 0 for r in a[1:])
    assert first_difference(a, b) is None, first_difference(a, b)
    weights_a, weights_b = (final_weights(run, tmp_path) for run in (run_a, run_b))
    assert weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[name]), name


@pytest.fixture(scope="module")
def slow_runs(tmp_path_factory):
    """Three runs whose steps take seconds (a slow reward), each sent SIGINT once step 1 is
    computing its rewards: "sigint" nothing more; "again" SIGINT once more 3 s later; "other"
    SIGTERM 0.2 s later.
    name -> (run dir, exit status, stderr, seconds from the last signal to the exit).

    A repeat of the first signal within ``DUPLICATE_WINDOW_S`` (1 s) is a copy of it (torchrun
    and SLURM deliver one signal twice); the run measures the gap as its watcher thread reads
    the signals, which it does when it next holds the GIL, so a late read of the first shortens
    it: 3 s apart leaves 2 s for such delays on a loaded machine (step 1's rewards take at least
    32 x 0.2 s, so both signals land inside it). A different signal is a second request however
    soon it comes."""
    root = tmp_path_factory.mktemp("slow")
    (root / "slow_reward.py").write_text(SLOW_REWARD)
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **CONFIG,
                "task": {
                    **CONFIG["task"],
                    "verifier": {"kind": "function", "function": "slow_reward:reward"},
                },
                "train": {**CONFIG["train"], "save_every_steps": 0, "eval_num_problems": 4},
            }
        )
    )

    def stop(name: str, second: signal.Signals | None, after: float = 0.0):
        run = root / name
        proc = popen(config, run, root)
        try:
            wait_inside_step_1(proc, run, root)  # its 32 rewards take 6.4 s or more
            proc.send_signal(signal.SIGINT)
            if second is not None:
                time.sleep(after)
                proc.send_signal(second)
            sent = time.monotonic()
            _, err = proc.communicate(timeout=120)
            return run, proc.returncode, err, time.monotonic() - sent
        finally:
            proc.kill()

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            "sigint": pool.submit(stop, "sigint", None),
            "again": pool.submit(stop, "again", signal.SIGINT, 3.0),
            "other": pool.submit(stop, "other", signal.SIGTERM, 0.2),
        }
        yield {name: f.result() for name, f in futures.items()}


def test_sigint_finishes_the_step_and_checkpoints(slow_runs):
    run, status, err, _ = slow_runs["sigint"]
    assert status == 130, err[-4000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert stderr_lines(err)[-1].startswith("megatron-spark: stopped by SIGINT after step 1: checkpoint ")
    assert (run / "checkpoints/latest").read_text().strip() == "step_000001"
    assert ckpt.damage(run / "checkpoints/step_000001") is None


@pytest.mark.parametrize(
    "name, line, status",
    [("again", "received SIGINT again", 130), ("other", "received SIGTERM after SIGINT", 143)],
    ids=["same_signal_after_the_window", "other_signal_at_once"],
)
def test_a_second_signal_exits_at_once(slow_runs, name, line, status):
    run, got, err, waited = slow_runs[name]
    assert got == status, err[-4000:]
    assert waited < 5, f"took {waited:.1f} s after the second signal"
    assert f"{line}: exiting now, without a checkpoint" in err, err[-4000:]
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


FULL_DISK_WRITER = """
import builtins, errno, io, os

_open = io.open

def _full(file, mode="r", *args, **kwargs):
    name = str(file) if isinstance(file, str | os.PathLike) else ""
    if ".step_000002.tmp" in name and any(c in mode for c in "wax+"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
    return _open(file, mode, *args, **kwargs)

builtins.open = io.open = _full
"""


@pytest.fixture
def full_disk(request, tmp_path):
    """A directory whose disk fills during the second checkpoint: (directory, PYTHONPATH extra)."""
    if request.param == "tmpfs":
        mnt = tmp_path / "tmpfs"
        mnt.mkdir()
        # 16 MiB: the tiny model's first checkpoint (11 MiB) fits, the second does not.
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True
        )
        if mounted.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the injected case runs"
            )
        try:
            yield mnt, None
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    else:
        hooks = tmp_path / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(FULL_DISK_WRITER)
        yield tmp_path, hooks


@pytest.mark.parametrize("full_disk", ["tmpfs", "injected"], indirect=True)
def test_a_full_disk_reports_enospc_and_keeps_latest_intact(full_disk, tmp_path):
    where, hooks = full_disk
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "task": {**CONFIG["task"], "verifier": {"kind": "math"}}}))
    run = where / "run"
    proc = cli(["train", config, f"run_dir={run}", "train.num_steps=3", "train.keep_checkpoints=1"], hooks)
    refused(proc, "No space left on device", "checkpoint step 2 not written", "'latest' still names")
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_000001"]
    assert (checkpoints / "latest").read_text().strip() == "step_000001"
    assert ckpt.damage(checkpoints / "step_000001") is None
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"

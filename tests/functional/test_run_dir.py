"""Run directories are owned (docs/training.md, "Run directories"): one run at a time, a fresh run
never over a previous one without ``--overwrite``, never over the user's files; ``--resume``
falls back past a damaged checkpoint, cleans a dead run's temporaries, and refuses a train state
whose pickle would run code.

One short training run (3 steps, a checkpoint each) is the material; each case works on a copy.
The CLI cases start together on a small pool (a process costs a few CPU-seconds of imports).
"""

from __future__ import annotations

import json
import shutil
import socket
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
from tests.edges import cli, refused, snapshot

TINY = {
    "seed": 0,
    "model": {"init": "preset:tiny-llama", "tokenizer": "builtin:arith"},
    "task": {
        "kind": "arithmetic",
        "arithmetic": {"max_digits": 1, "min_operands": 2, "max_operands": 2, "held_out_size": 8},
    },
    "rollout": {"num_samples_per_prompt": 4, "max_new_tokens": 16},
    "train": {
        "num_steps": 3,
        "num_prompts_per_step": 8,
        "eval_num_problems": 8,
        "micro_batch_tokens": 2048,
        "save_every_steps": 1,
        "keep_checkpoints": 3,
    },
}

SLOW_REWARD = """
import time

def reward(response, answer):
    time.sleep(0.2)
    return 0.0
"""


class Marker:
    """Pickles to a call that creates ``path``: what a crafted checkpoint would run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    """(config, run directory with checkpoints at steps 1, 2, 3)."""
    root = tmp_path_factory.mktemp("run_dir")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = root / "base"
    proc = cli(["train", config, f"run_dir={run}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest",
        "step_000001",
        "step_000002",
        "step_000003",
    ]
    return config, run


def copy_run(base_run: Path, dest: Path) -> Path:
    shutil.copytree(base_run, dest)
    return dest


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def outcomes(base, tmp_path_factory):
    """name -> (work directory, future of the finished CLI process), all started up front."""
    config, run = base
    root = tmp_path_factory.mktemp("cases")
    cases: dict[str, tuple[Path, list]] = {}

    d = copy_run(run, root / "fresh_over_run")
    cases["fresh_over_run"] = (d, ["train", config, f"run_dir={d}"])

    d = root / "user_config"
    d.mkdir()
    (d / "config.yaml").write_text("# the user's own config\nseed: 1\n")
    cases["user_config"] = (d, ["train", config, f"run_dir={d}", "--overwrite"])

    d = copy_run(run, root / "overwrite")
    (d / "notes.txt").write_text("the user's notes\n")
    cases["overwrite"] = (d, ["train", config, f"run_dir={d}", "train.num_steps=1", "--overwrite"])

    d = copy_run(run, root / "resume_and_overwrite")
    cases["resume_and_overwrite"] = (d, ["train", config, f"run_dir={d}", "--resume", "--overwrite"])

    d = copy_run(run, root / "damaged_latest")
    distcp = sorted((d / "checkpoints/step_000003/model").glob("*.distcp"))[0]
    distcp.write_bytes(distcp.read_bytes()[:1000])
    (d / "checkpoints/.step_000004.tmp/model").mkdir(parents=True)  # a dead run's partial save
    cases["damaged_latest"] = (d, ["train", config, f"run_dir={d}", "train.num_steps=4", "--resume"])

    d = copy_run(run, root / "all_damaged")
    for step in (1, 2, 3):
        (d / f"checkpoints/step_{step:06d}/model/.metadata").unlink()
    cases["all_damaged"] = (d, ["train", config, f"run_dir={d}", "train.num_steps=4", "--resume"])

    d = copy_run(run, root / "pickled_state")
    state = d / "checkpoints/step_000003/train_state"
    for f in state.glob("rank_00000.*"):
        f.unlink()
    torch.save({"step": 3, "optimizer": Marker(root / "pwned-state")}, state / "rank_00000.pt")
    cases["pickled_state"] = (d, ["train", config, f"run_dir={d}", "train.num_steps=4", "--resume"])

    d = copy_run(run, root / "pickled_metadata")
    meta = d / "checkpoints/step_000003/model/.metadata"
    meta.write_bytes(__import__("pickle").dumps(Marker(root / "pwned-metadata")))
    out = root / "pickled_metadata_hf"
    cases["pickled_metadata"] = (
        d,
        ["convert", "megatron-to-hf", "--ckpt", d / "checkpoints/step_000003", "--out", out],
    )

    cases["keep_zero"] = (root / "keep_zero", ["train", config, f"run_dir={root / 'keep_zero'}"])
    cases["keep_zero"][1].append("train.keep_checkpoints=0")

    before = {name: snapshot(d) for name, (d, _) in cases.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(cli, args) for name, (_, args) in cases.items()}
        yield root, {name: (cases[name][0], before[name], futures[name]) for name in cases}


def unchanged_refusal(outcomes, name: str, *needles: str) -> str:
    _, cases = outcomes
    d, before, future = cases[name]
    line = refused(future.result(), *needles)
    assert snapshot(d) == before, "the refused command changed or created files"
    return line


def test_a_fresh_run_over_a_previous_run_is_refused(outcomes):
    unchanged_refusal(outcomes, "fresh_over_run", "already holds a run", "--resume", "--overwrite")


def test_a_file_the_run_did_not_write_is_never_replaced(outcomes):
    """The user's own config.yaml in the run directory: refused even with --overwrite."""
    unchanged_refusal(outcomes, "user_config", "config.yaml", "not written by a megatron-spark run")


def test_overwrite_replaces_the_previous_run_and_nothing_else(outcomes):
    _, cases = outcomes
    d, _, future = cases["overwrite"]
    proc = future.result()
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (d / "notes.txt").read_text() == "the user's notes\n"
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["latest", "step_000001"]
    assert steps(d) == [0, 1]


def test_resume_and_overwrite_exclude_each_other(outcomes):
    unchanged_refusal(outcomes, "resume_and_overwrite", "--resume and --overwrite")


def test_resume_skips_a_damaged_latest_checkpoint_and_cleans_temporaries(outcomes):
    _, cases = outcomes
    d, _, future = cases["damaged_latest"]
    proc = future.result()
    assert proc.returncode == 0, proc.stderr[-4000:]
    said = "".join(proc.stdout.split())  # the console wraps long lines
    assert "--resume:skippedstep_000003:" in said and "truncated" in said, proc.stdout
    assert f"--resume:continuingfrom{d}/checkpoints/step_000002" in said, proc.stdout
    assert steps(d) == [0, 1, 2, 3, 4]  # the record cut back to step 2, then steps 3 and 4 again
    assert (d / "checkpoints/latest").read_text().strip() == "step_000004"
    assert not list((d / "checkpoints").glob(".*.tmp"))
    assert ckpt.damage(d / "checkpoints/step_000003") is None  # rewritten whole


def test_resume_with_no_intact_checkpoint_names_why(outcomes):
    unchanged_refusal(outcomes, "all_damaged", "--resume", "no complete checkpoint", ".metadata: missing")


def test_a_train_state_pickle_that_would_run_code_is_refused(outcomes):
    root, _ = outcomes
    unchanged_refusal(outcomes, "pickled_state", "rank_00000.pt", "refused")
    assert not (root / "pwned-state").exists()


def test_a_model_metadata_pickle_that_would_run_code_is_refused(outcomes):
    root, _ = outcomes
    unchanged_refusal(outcomes, "pickled_metadata", ".metadata", "refused", "pathlib.Path.touch")
    assert not (root / "pwned-metadata").exists()
    assert not (root / "pickled_metadata_hf").exists()


def test_keep_checkpoints_zero_is_refused(outcomes):
    """It used to delete the run's own final checkpoint and exit 0."""
    unchanged_refusal(outcomes, "keep_zero", "train.keep_checkpoints=0", ">= 1")


def test_pruning_never_removes_the_newest_checkpoint(tmp_path):
    for step in (1, 2, 3, 7):
        (tmp_path / f"step_{step:06d}").mkdir()
    ckpt.prune(tmp_path, tmp_path / "step_000003", keep=1)
    # Older than the one just written: pruned to keep - 1; newer (a dead run's): not ours to judge.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000003", "step_000007"]


@pytest.mark.parametrize(
    "damage,needle",
    [
        ("no_metadata", ".metadata: missing"),
        ("truncated_distcp", "truncated"),
        ("corrupt_meta_json", "meta.json: damaged"),
        ("truncated_state", "rank_00000.safetensors: truncated or corrupt"),
        ("corrupt_checkpoint_json", "megatron_spark.json: unreadable"),
    ],
)
def test_damage_names_the_file(base, tmp_path, damage, needle):
    step = copy_run(base[1] / "checkpoints/step_000003", tmp_path / "step_000003")
    if damage == "no_metadata":
        (step / "model/.metadata").unlink()
    elif damage == "truncated_distcp":
        f = sorted((step / "model").glob("*.distcp"))[-1]
        f.write_bytes(f.read_bytes()[:-1])
    elif damage == "corrupt_meta_json":
        (step / "train_state/meta.json").write_text('{"step": 3,')
    elif damage == "truncated_state":
        f = step / "train_state/rank_00000.safetensors"
        f.write_bytes(f.read_bytes()[:-8])
    else:
        (step / "megatron_spark.json").write_bytes(b"\xff\xfe")
    reason = ckpt.damage(step)
    assert reason is not None and needle in reason, reason


def test_a_second_run_on_a_locked_directory_is_refused(base, tmp_path):
    """The first run holds the lock (slowed down by its reward); the second names it and leaves."""
    config, _ = base
    (tmp_path / "slow_reward.py").write_text(SLOW_REWARD)
    run = tmp_path / "run"
    env = _env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    args = [f"run_dir={run}", "task.verifier.kind=function", "task.verifier.function=slow_reward:reward"]
    first = subprocess.Popen(
        [sys.executable, "-m", "megatron_spark.cli", "train", str(config), *args, "train.num_steps=50"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    try:
        lock = run / ".megatron-spark.lock"
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip()):
            assert first.poll() is None, f"the first run exited {first.returncode}"
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        line = refused(
            cli(["train", config, *args, "--resume"], pythonpath=tmp_path),
            str(run),
            f"pid {first.pid} on host {socket.gethostname()}",
        )
        assert "in use by train run" in line
    finally:
        first.kill()
        first.wait()

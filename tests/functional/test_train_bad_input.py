"""Bad input to ``megatron-spark train|sft``: exit 2, one stderr line naming the file or key and
what was expected, no checkpoint. Also the two failures a run must survive or stop on cleanly: a
verifier that never returns, and steps whose gradients are not finite.

Each case is a separate CLI process. Starting one costs a few CPU-seconds (torch and megatron
imports), so the module fixture starts every case at once on a small pool and each test waits for
its own; selecting a single test with ``-k`` still runs them all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from megatron_spark.train.config import RunConfig, TrainerConfig
from tests.conftest import REPO, _env

# One GRPO step of this config takes about a second on one CPU core.
TINY = {
    "seed": 0,
    "model": {"init": "preset:tiny-llama", "tokenizer": "builtin:arith"},
    "task": {
        "kind": "arithmetic",
        "arithmetic": {"max_digits": 1, "min_operands": 2, "max_operands": 2, "held_out_size": 16},
    },
    "rollout": {"num_samples_per_prompt": 4, "max_new_tokens": 16},
    "train": {
        "num_steps": 2,
        "num_prompts_per_step": 8,
        "eval_num_problems": 16,
        "micro_batch_tokens": 2048,
    },
}
EVAL_PROBLEMS = TINY["train"]["eval_num_problems"]
GROUP = TINY["rollout"]["num_samples_per_prompt"]
SAMPLES_PER_STEP = TINY["train"]["num_prompts_per_step"] * GROUP

HANGING_REWARD = """
import time

def reward(response, answer):
    while True:
        time.sleep(3600)
"""

# Rewards of 1e300 are finite (the verifier accepts them) but the ``mean`` advantage is cast to
# float32, where it overflows: that step's loss and gradients are not finite. Calls arrive in a
# fixed order: the step-0 evaluation, then SAMPLES_PER_STEP per training step, group by group; the
# first sample of every group of a bad step gets the huge reward.
OVERFLOWING_REWARD = f"""
import itertools

_calls = itertools.count()
BAD_STEPS = {{1, 3, 4}}

def reward(response, answer):
    i = next(_calls) - {EVAL_PROBLEMS}
    step = i // {SAMPLES_PER_STEP} + 1 if i >= 0 else 0
    if step in BAD_STEPS and i % {GROUP} == 0:
        return 1e300
    return 1.0 if answer in response else 0.0
"""

GOOD_ROW = {"prompt": "Compute 1+2.", "answer": "3"}


@dataclasses.dataclass
class Case:
    args: list[str]
    run_dir: Path
    pythonpath: Path | None = None
    """A directory the run imports a reward module from."""
    checkpoints_before: tuple[str, ...] = ()
    """What ``run_dir/checkpoints`` held before the run (a failed run must leave it so)."""


def run_cli_with_path(case: Case) -> subprocess.CompletedProcess:
    env = _env()
    if case.pythonpath is not None:
        env["PYTHONPATH"] = f"{case.pythonpath}{os.pathsep}{env['PYTHONPATH']}"
    return subprocess.run(
        [sys.executable, "-m", "megatron_spark.cli", *case.args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def jsonl(path: Path, *rows: bytes | dict) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def build_cases(root: Path) -> dict[str, Case]:
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    bad_section = root / "bad_section.yaml"
    bad_section.write_text(yaml.safe_dump({**TINY, "trainer": {"num_steps": 3}}))
    not_yaml = root / "not_yaml.yaml"
    not_yaml.write_text("model: {init: preset:tiny-llama\ntrain: [num_steps\n")
    rows = {
        "missing_prompt": jsonl(root / "missing_prompt.jsonl", GOOD_ROW, {"answer": "3"}),
        "missing_answer": jsonl(
            root / "missing_answer.jsonl", GOOD_ROW, GOOD_ROW, {"prompt": "Compute 2+2."}
        ),
        "empty_prompt": jsonl(root / "empty_prompt.jsonl", GOOD_ROW, {"prompt": "  ", "answer": "1"}),
        "invalid_json": jsonl(root / "invalid_json.jsonl", GOOD_ROW, GOOD_ROW, b'{"prompt": "Compute 1+2.",'),
        "invalid_utf8": jsonl(
            root / "invalid_utf8.jsonl", GOOD_ROW, b'{"prompt": "\xff\xfe", "answer": "1"}'
        ),
    }
    rewards = root / "rewards"
    rewards.mkdir()
    (rewards / "hanging_reward.py").write_text(HANGING_REWARD)
    (rewards / "overflowing_reward.py").write_text(OVERFLOWING_REWARD)
    # A run directory with a checkpoint: only the ``latest`` pointer and its directory count.
    existing = root / "existing"
    (existing / "checkpoints" / "step_000001").mkdir(parents=True)
    (existing / "checkpoints" / "latest").write_text("step_000001\n")

    def case(name: str, *overrides: str, command: str = "train", cfg: Path = config, **kw):
        run_dir = kw.pop("run_dir", root / name)
        args = [command, str(cfg), f"run_dir={run_dir}", *overrides]
        return name, Case(args, run_dir, **kw)

    cases = [
        # The three runs first: they take the longest.
        case(
            "hanging_verifier",
            "task.verifier.kind=function",
            "task.verifier.function=hanging_reward:reward",
            "task.verifier.timeout_s=0.2",
            "train.num_prompts_per_step=2",
            "rollout.num_samples_per_prompt=2",
            "train.eval_num_problems=2",
            pythonpath=rewards,
        ),
        case(
            "overflowing_reward",
            "task.verifier.kind=function",
            "task.verifier.function=overflowing_reward:reward",
            "grpo.advantage=mean",
            "train.num_steps=6",
            "train.max_consecutive_bad_steps=2",
            pythonpath=rewards,
        ),
        case(
            "sft_huge_lr",
            "optim.lr=1e30",
            "optim.clip_grad_norm=0",
            "train.num_steps=6",
            "train.max_consecutive_bad_steps=2",
            command="sft",
        ),
        case("unknown_key", "train.num_stepz=3"),
        case("unknown_section", cfg=bad_section),
        case("wrong_type_float", "optim.lr=abc"),
        case("wrong_type_int", "train.num_steps=2.5"),
        case("nan_lr", "optim.lr=nan"),
        case("bad_choice", "grpo.advantage=foo"),
        case("sp_without_tp", "parallel.sequence_parallel=true"),
        case("not_yaml", cfg=not_yaml),
        case("long_prompt", "task.max_prompt_tokens=4"),
        case("beyond_context", "rollout.max_new_tokens=600"),
        case("resume_without_checkpoint", "--resume"),
        case(
            "existing_checkpoints",
            run_dir=existing,
            checkpoints_before=("latest", "step_000001"),
        ),
        *(case(name, "task.kind=file", f"task.file.train_path={path}") for name, path in rows.items()),
    ]
    return dict(cases)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """name -> (case, future of its finished process); every case is started up front."""
    cases = build_cases(tmp_path_factory.mktemp("train_bad_input"))
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures: dict[str, Future] = {name: pool.submit(run_cli_with_path, c) for name, c in cases.items()}
        yield {name: (cases[name], futures[name]) for name in cases}


def failure_line(outcomes, name: str) -> str:
    """The one stderr line of a case that must exit 2 without writing a checkpoint."""
    case, future = outcomes[name]
    proc = future.result()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("megatron-spark: error: "), lines[0]
    checkpoints = case.run_dir / "checkpoints"
    after = tuple(sorted(p.name for p in checkpoints.iterdir())) if checkpoints.exists() else ()
    assert after == case.checkpoints_before, f"checkpoints written: {after}"
    return lines[0]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_names(line: str, *needles: str) -> None:
    for needle in needles:
        assert needle in line, f"{needle!r} not in: {line}"


# ------------------------------------------------------------------------------- config


def test_unknown_key_lists_the_valid_keys(outcomes):
    line = failure_line(outcomes, "unknown_key")
    assert_names(line, "tiny.yaml", "unknown key 'train.num_stepz'")
    valid = line.split("valid keys", 1)[1]
    assert_names(valid, *(f.name for f in dataclasses.fields(TrainerConfig)))


def test_unknown_section_in_the_file(outcomes):
    line = failure_line(outcomes, "unknown_section")
    assert_names(line, "bad_section.yaml", "unknown key 'trainer'")
    valid = line.split("valid keys", 1)[1]
    assert_names(valid, *(f.name for f in dataclasses.fields(RunConfig)))


@pytest.mark.parametrize(
    "name,needles",
    [
        ("wrong_type_float", ("optim.lr='abc'", "expected float")),
        ("wrong_type_int", ("train.num_steps=2.5", "expected int")),
        ("nan_lr", ("optim.lr=nan", "expected a finite number")),
    ],
)
def test_wrong_type_names_key_and_type(outcomes, name, needles):
    assert_names(failure_line(outcomes, name), "tiny.yaml", *needles)


def test_literal_lists_the_choices(outcomes):
    line = failure_line(outcomes, "bad_choice")
    assert_names(line, "grpo.advantage='foo'", "'std'", "'mean'")


def test_sequence_parallel_needs_tensor_parallelism(outcomes):
    assert_names(
        failure_line(outcomes, "sp_without_tp"),
        "tiny.yaml",
        "sequence_parallel needs tensor_parallel_size > 1",
    )


def test_config_that_is_not_yaml(outcomes):
    assert_names(failure_line(outcomes, "not_yaml"), "not_yaml.yaml", "not valid YAML")


# ------------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    "name,where,needle",
    [
        ("missing_prompt", "missing_prompt.jsonl:2", "missing key 'prompt'"),
        ("missing_answer", "missing_answer.jsonl:3", "missing key 'answer'"),
        ("empty_prompt", "empty_prompt.jsonl:2", "'prompt' is empty"),
        ("invalid_json", "invalid_json.jsonl:3", "invalid JSON"),
        ("invalid_utf8", "invalid_utf8.jsonl:2", "invalid UTF-8"),
    ],
)
def test_bad_dataset_row_names_file_and_line(outcomes, name, where, needle):
    assert_names(failure_line(outcomes, name), where, needle)


def test_prompt_longer_than_max_prompt_tokens(outcomes):
    assert_names(failure_line(outcomes, "long_prompt"), "prompt of problem", "max_prompt_tokens=4")


def test_prompt_plus_response_beyond_the_model_context(outcomes):
    # Refused before the model is built, naming every phase that cannot fit and its longest prompt.
    assert_names(
        failure_line(outcomes, "beyond_context"),
        "held-out evaluation: the prompt of problem",
        "policy rollout: the prompt of problem",
        "rollout.max_new_tokens=600 = 608 positions",
        "max_position_embeddings=512",
    )


# ------------------------------------------------------------------------------- run directory


def test_resume_without_a_checkpoint(outcomes):
    case, _ = outcomes["resume_without_checkpoint"]
    line = failure_line(outcomes, "resume_without_checkpoint")
    assert_names(line, "--resume", "no complete checkpoint", str(case.run_dir / "checkpoints"))


def test_existing_checkpoints_need_resume(outcomes):
    case, _ = outcomes["existing_checkpoints"]
    line = failure_line(outcomes, "existing_checkpoints")
    assert_names(line, str(case.run_dir), "already holds a run (checkpoints)", "--resume", "--overwrite")
    assert sorted(p.name for p in case.run_dir.iterdir()) == ["checkpoints"]  # nothing else written


# ------------------------------------------------------------------------------- runs that go on or stop


def test_hanging_verifier_times_out_and_the_run_completes(outcomes):
    case, future = outcomes["hanging_verifier"]
    proc = future.result()
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = records(case.run_dir)
    assert [r["step"] for r in steps] == [0, 1, 2]
    for r in steps[1:]:
        assert r["reward/timeouts"] == 4  # every sample of the step: 2 prompts x 2 samples
        assert r["policy/reward_mean"] == 0.0
        assert r["train/skipped_steps"] == 0.0
    assert steps[0]["eval/accuracy"] == steps[-1]["eval/accuracy"] == 0.0
    assert (case.run_dir / "checkpoints" / "latest").read_text().strip() == "step_000002"


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(outcomes):
    """Bad steps 1, 3, 4 with max_consecutive_bad_steps=2: step 2 trains normally, step 4 stops."""
    case, _ = outcomes["overflowing_reward"]
    line = failure_line(outcomes, "overflowing_reward")
    assert_names(line, "2 consecutive steps", "non-finite", "last at step 4", "max_consecutive_bad_steps=2")
    steps = records(case.run_dir)
    assert [r["step"] for r in steps] == [0, 1, 2, 3, 4]  # the stopping step is recorded...
    assert [r["train/skipped_steps"] for r in steps[1:]] == [1.0, 1.0, 2.0, 3.0]
    assert steps[1]["train/grad_norm"] == steps[4]["train/grad_norm"] == "nan"
    assert not (case.run_dir / "checkpoints" / "step_000004").exists()  # ...and never saved
    assert isinstance(steps[2]["train/grad_norm"], float)  # finite: the skipped step left no trace
    assert isinstance(steps[2]["train/loss"], float)
    # Each skipped step names what went non-finite: the overflowing advantages and the surrogate.
    proc = outcomes["overflowing_reward"][1].result()
    skipped = [out for out in proc.stdout.splitlines() if " skipped (loss " in out]
    assert [out.split()[1] for out in skipped] == ["1", "3", "4"], proc.stdout[-3000:]
    for out in skipped:
        assert_names(out, "update 1 micro-batch 1/1", "inputs advantages (", "terms surrogate (")
    assert_names(line, "last at step 4: update 1 micro-batch 1/1: inputs advantages")
    assert [r["train/nonfinite_microbatches"] for r in steps[1:]] == [1.0, 0.0, 1.0, 1.0]


def test_sft_with_a_huge_lr_stops_after_consecutive_bad_steps(outcomes):
    """lr=1e30 applies step 1 (its gradient is finite) and leaves non-finite weights; every later
    step then has a non-finite gradient, is skipped, and the second in a row stops the run."""
    case, _ = outcomes["sft_huge_lr"]
    line = failure_line(outcomes, "sft_huge_lr")
    assert_names(line, "2 consecutive steps", "last at step 3", "lower optim.lr")
    steps = records(case.run_dir)
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    assert isinstance(steps[1]["train/grad_norm"], float) and steps[1]["train/skipped_steps"] == 0.0
    assert steps[2]["train/grad_norm"] == "nan" and steps[2]["train/skipped_steps"] == 1.0
    assert steps[3]["train/grad_norm"] == "nan" and steps[3]["train/skipped_steps"] == 2.0
    # The NaN weights reach the loss head as NaN logits, and through them the cross-entropy.
    assert_names(line, "last at step 3: update 1 micro-batch 1/1: inputs logits (", "terms cross_entropy (")

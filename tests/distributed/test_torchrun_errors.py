"""Under torchrun the cause of a failure is the last line the user reads.

torchrun's agent prints its own ~30-line failure summary after the workers exit; its last field
is the worker's error file (megatron_spark/elastic.py). Real torchrun, 2 gloo processes, a bad
config found before the process group exists and a missing data file found after it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, _env, free_port

pytestmark = pytest.mark.distributed


def _torchrun_failing(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
    ]
    proc = subprocess.run(
        [*cmd, "-m", "megatron_spark.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        cwd=REPO,
    )
    assert proc.returncode != 0, proc.stderr[-4000:]
    return proc


def _last_line(stderr: str) -> str:
    """The last line that is not blank and not the summary's closing rule."""
    lines = [line for line in stderr.splitlines() if line.strip() and set(line.strip()) != {"="}]
    return lines[-1]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.lrr=1"], "unknown key 'optim.lrr'"),  # refused while reading the config
        (  # refused while building the data, after the process group is up
            ["task.kind=file", "task.file={train_path: /nonexistent/train.jsonl}"],
            "/nonexistent/train.jsonl: file not found",
        ),
    ],
)
def test_root_cause_is_the_last_line(overrides, message, tmp_path):
    proc = _torchrun_failing(
        ["train", str(REPO / "examples/tiny_arith/grpo.yaml"), f"run_dir={tmp_path / 'run'}", *overrides]
    )
    last = _last_line(proc.stderr)
    assert last.startswith("  traceback : megatron-spark: error: "), proc.stderr[-3000:]
    assert message in last
    # Printed once by rank 0 as well, as in a plain run (before torchrun's summary).
    assert proc.stderr.splitlines()[0].startswith("megatron-spark: error: ")


def test_a_bug_leaves_its_traceback_for_the_summary(tmp_path, monkeypatch):
    """Any other exception: torch's ErrorHandler writes the traceback, which the agent's summary
    then shows, ending with the exception's own line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from megatron_spark import elastic

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    try:
        raise RuntimeError("shapes [3, 4] and [5, 6] do not match")
    except RuntimeError as e:
        elastic.record_exception(e)
    assert "Traceback" in json.loads(error_file.read_text())["message"]["extraInfo"]["py_callstack"]
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(error_file))
    summary = ChildFailedError("megatron_spark.cli", {0: failure}).format_msg()
    assert _last_line(summary).strip() == "RuntimeError: shapes [3, 4] and [5, 6] do not match"


def test_outside_torchrun_nothing_is_written(tmp_path, monkeypatch):
    from megatron_spark import elastic

    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    elastic.record_user_error("megatron-spark: error: x")
    try:
        raise ValueError("x")
    except ValueError as e:
        elastic.record_exception(e)
    assert list(tmp_path.iterdir()) == []

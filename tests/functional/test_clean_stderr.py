"""The demo's path prints nothing on stderr when it succeeds: no warning from a third-party package
(transformers, torch, megatron) reaches a user who runs the README's commands.

A shortened ``megatron-spark demo`` (its SFT, SPARK and evaluation stages, 2 steps each) and a
``generate --tts self-reflect`` on its checkpoint run as fresh processes with Python's default
warning filters, as a user's shell has them. stderr is reserved for the one-line error of a failed
command, so on success it must be empty.
"""

from __future__ import annotations

import json
import os

from tests.conftest import run_cli

SHORT = [
    "train.num_steps=2",
    "train.num_prompts_per_step=4",
    "train.eval_every_steps=0",
    "train.eval_num_problems=8",
    "train.save_every_steps=2",
]


def _first_held_out_prompt(recipe) -> str:
    from megatron_spark.config import load_config
    from megatron_spark.data.datasets import load_task
    from megatron_spark.train.config import RunConfig

    cfg = load_config(RunConfig, recipe)
    return load_task(cfg.task.source_config()).held_out()[0].prompt


def _no_stderr(proc, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert proc.stderr.strip() == "", f"{what} wrote to stderr:\n{proc.stderr[-4000:]}"


def test_demo_path_writes_nothing_to_stderr(tmp_path, monkeypatch):
    # The pytest process ignores some warning classes (pyproject); the commands must not inherit
    # any filter from the environment either.
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    assert "PYTHONWARNINGS" not in os.environ
    run_dir = tmp_path / "demo"
    demo = run_cli(["demo", "--run-dir", str(run_dir), *SHORT], timeout=600)
    _no_stderr(demo, "megatron-spark demo")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["heldout"]) == {"sft", "spark"}

    checkpoint = (run_dir / "spark" / "checkpoints" / "latest").read_text().strip()
    recipe = run_dir / "spark" / "config.yaml"
    gen = run_cli(
        [
            "generate",
            str(recipe),
            "--checkpoint",
            str(run_dir / "spark" / "checkpoints" / checkpoint),
            "--prompt",
            _first_held_out_prompt(recipe),
            "--tts",
            "self-reflect",
        ]
    )
    _no_stderr(gen, "megatron-spark generate --tts self-reflect")
    assert json.loads(gen.stdout.strip().splitlines()[-1])

"""The demo's path prints nothing on stderr when it succeeds: no warning from a third-party package
(transformers, torch, megatron) reaches a user who runs the README's commands.

A shortened ``megatron-spark demo`` (its SFT, SPARK and evaluation stages, 2 steps each) and a
``generate --tts self-reflect`` on its checkpoint run as fresh processes with Python's default
warning filters, as a user's shell has them. stderr is reserved for the one-line error of a failed
command and, for ``generate`` (whose stdout holds its rows), its progress lines; anything else on
it is a leak.
"""

from __future__ import annotations

import json
import os
import re

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


PROGRESS_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d generate \S+ \d+/\d+ sequences ")
"""A progress line of ``generate`` (megatron_spark/progress.py; stdout is not a terminal here)."""


def _no_stderr(proc, what: str, allowed: re.Pattern | None = None) -> None:
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    leaked = [line for line in proc.stderr.splitlines() if not (allowed and allowed.match(line))]
    assert leaked == [], f"{what} wrote to stderr:\n{proc.stderr[-4000:]}"


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
    prompt = _first_held_out_prompt(recipe)
    gen = run_cli(
        [
            "generate",
            str(recipe),
            "--checkpoint",
            str(run_dir / "spark" / "checkpoints" / checkpoint),
            "--prompt",
            prompt,
            "--tts",
            "self-reflect",
        ]
    )
    _no_stderr(gen, "megatron-spark generate --tts self-reflect", allowed=PROGRESS_LINE)
    assert PROGRESS_LINE.match(gen.stderr.splitlines()[-1])
    # stdout holds the rows and nothing else.
    assert [json.loads(line)["prompt"] for line in gen.stdout.splitlines()] == [prompt]

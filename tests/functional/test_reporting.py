"""Runs report themselves where clusters log them, and eval/generate show what they did.

A short judge-format SFT run with stdout captured (not a terminal, as under SLURM) and wandb in
offline mode gives the checkpoint that ``generate`` and ``eval`` then read:

* training prints a timestamped progress line per period, and wandb's offline run is written;
* ``generate`` counts its sequences to N/N under its own label on stderr (its stdout holds only
  its rows), reads ``--input`` rows by ``task.file.prompt_key`` and shows each self-reflection
  round's answer and verdict;
* ``eval`` counts each phase's sequences to N/N and reports the reward benchmark's verdict parse
  rate with a per-item file.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO, run_cli

STEPS = 3
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+(?: [^\d\s]\S*)*) (\d+)/(\d+) (steps|sequences) ")


def _progress(text: str) -> list[tuple[str, int, int]]:
    """(label, done, total) of every progress line of ``text``."""
    return [(m[1], int(m[2]), int(m[3])) for m in map(LINE.match, text.splitlines()) if m]


def _last_per_label(lines):
    last = {}
    for label, done, total in lines:
        last[label] = (done, total)
    return last


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A 3-step judge-format SFT run (stdout captured) with wandb offline; (run dir, process)."""
    pytest.importorskip("wandb")
    run_dir = tmp_path_factory.mktemp("reporting") / "sft"
    proc = run_cli(
        [
            "sft",
            str(REPO / "examples/tiny_arith/sft_spark.yaml"),
            f"run_dir={run_dir}",
            f"train.num_steps={STEPS}",
            "train.num_prompts_per_step=8",
            "train.eval_num_problems=4",
            "metrics.progress_every_s=0",  # a line per step
            "metrics.wandb.enabled=true",
            "metrics.wandb.mode=offline",
            "metrics.wandb.project=megatron-spark-tests",
        ],
        check=True,
    )
    return run_dir, proc


def test_training_prints_progress_lines_when_stdout_is_not_a_terminal(sft):
    _, proc = sft
    steps = [(done, total) for label, done, total in _progress(proc.stdout) if label == "sft"]
    # The start, then a line per step record (step 0 is the initial evaluation).
    assert steps[0] == (0, STEPS) and steps[-1] == (STEPS, STEPS)
    assert {done for done, _ in steps} == set(range(STEPS + 1))
    assert "━" not in proc.stdout  # no bar drawn into the log


def test_wandb_offline_run_is_written_in_the_run_dir(sft):
    run_dir, _ = sft
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    assert runs[0].stat().st_size > 1000  # header, run, config and the records
    assert (run_dir / "wandb" / "run_id").read_text().strip() in runs[0].name


def test_generate_reads_the_prompt_key_and_shows_self_reflection_rounds(sft, tmp_path):
    run_dir, _ = sft
    problems = [{"q": "Compute 1+2+3.", "a": "6"}, {"q": "Compute 4+5-1.", "a": "8"}]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    proc = run_cli(
        [
            "generate",
            str(run_dir / "config.yaml"),
            "task.kind=file",
            f"task.file={{train_path: {data}, prompt_key: q, answer_key: a, held_out_fraction: 0.0}}",
            "--checkpoint",
            str(run_dir / "checkpoints" / f"step_{STEPS:06d}"),
            "--input",
            str(data),
            "--tts",
            "self-reflect",
            "--rounds",
            "2",
        ],
        check=True,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout: the rows only
    assert [r["prompt"] for r in rows] == [p["q"] for p in problems]
    for row in rows:
        assert 1 <= len(row["rounds"]) <= 2
        for r in row["rounds"]:
            assert set(r) >= {"answer", "verdict", "judge_reply"}
            assert r["verdict"] in ("Yes", "No", None)
        # One generation for the first answer, then a verdict per judged round and a reflection
        # per rejected one.
        judged = sum(r["judge_reply"] is not None for r in row["rounds"])
        reflected = sum("reflection" in r for r in row["rounds"])
        assert row["generations"] == 1 + judged + reflected
    # The bar counts every sequence the rounds generated, under generate's own label.
    total = sum(r["generations"] for r in rows)
    assert _last_per_label(_progress(proc.stderr)) == {"generate self-reflect": (total, total)}


def test_generate_input_without_the_prompt_key_names_it(sft, tmp_path):
    run_dir, _ = sft
    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps({"q": "Compute 1+2.", "a": "3"}) + "\n")
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"prompt": "Compute 1+2."}) + "\n")
    proc = run_cli(
        [
            "generate",
            str(run_dir / "config.yaml"),
            "task.kind=file",
            f"task.file={{train_path: {data}, prompt_key: q, answer_key: a, held_out_fraction: 0.0}}",
            "--checkpoint",
            str(run_dir / "checkpoints" / f"step_{STEPS:06d}"),
            "--input",
            str(bad),
        ]
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"megatron-spark: error: {bad}:1: expected an object with a non-empty string 'q'"
    )


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_generate_input_without_prompts_says_so(sft, tmp_path, text):
    run_dir, _ = sft
    empty = tmp_path / "prompts.jsonl"
    empty.write_text(text)
    args = [
        "generate",
        str(run_dir / "config.yaml"),
        "--checkpoint",
        str(run_dir / "checkpoints" / f"step_{STEPS:06d}"),
    ]
    proc = run_cli([*args, "--input", str(empty)])
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"megatron-spark: error: --input {empty}: no prompts (expected a jsonl line per prompt)"
    )


def test_eval_counts_each_phase_and_reports_the_reward_bench_parse_rate(sft, tmp_path):
    run_dir, _ = sft
    bench = tmp_path / "bench.jsonl"
    bench.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"question": "Compute 1+2.", "response": "1+2=3. \\boxed{3}", "label": "correct"},
                {"question": "Compute 2+2.", "response": "2+2=5. \\boxed{5}", "label": "incorrect"},
                {
                    "question": "Compute 3+3.",
                    "response_a": "\\boxed{6}",
                    "response_b": "\\boxed{7}",
                    "label": "A",
                },
            ]
        )
    )
    out = tmp_path / "eval"
    proc = run_cli(
        [
            "eval",
            str(run_dir / "config.yaml"),
            "train.eval_num_problems=4",
            "--checkpoint",
            str(run_dir / "checkpoints" / f"step_{STEPS:06d}"),
            "--out",
            str(out),
            "--maj-k",
            "2",
            "--n",
            "2",
            "--rounds",
            "1",
            "--reward-bench",
            str(bench),
        ],
        check=True,
    )
    last = _last_per_label(_progress(proc.stdout))
    # pass@1 (4) + maj@2 (8); a verdict per reward-bench item; every phase ends at N/N.
    assert last["eval reasoning"] == (12, 12)
    assert last["eval reward bench"] == (3, 3)
    assert set(last) == {"eval reasoning", "eval judge", "eval test-time scaling", "eval reward bench"}
    assert all(done == total > 0 for done, total in last.values()), last
    result = json.loads((out / "eval.json").read_text())["reward_bench"]
    rows = [json.loads(line) for line in (out / result["items_file"]).read_text().splitlines()]
    assert [r["id"] for r in rows] == ["bench-1", "bench-2", "bench-3"]
    assert [r["expected"] for r in rows] == ["Yes", "No", "A"]
    parsed = [r["verdict"] is not None for r in rows]
    assert result["verdict_parse_rate"] == pytest.approx(sum(parsed) / 3)
    assert result["pointwise_verdict_parse_rate"] == pytest.approx(sum(parsed[:2]) / 2)
    assert result["pointwise_accuracy"] == pytest.approx(sum(r["correct"] for r in rows[:2]) / 2)
    assert all(r["correct"] == (r["verdict"] == r["expected"]) for r in rows)
    assert "verdict parse rate" in (out / "report.md").read_text()

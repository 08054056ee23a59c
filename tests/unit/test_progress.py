"""Console progress and metric loggers: periodic plain lines when stdout is not a terminal (a SLURM
log), and a wandb run written offline (no network) beside metrics.jsonl."""

from __future__ import annotations

import glob
import json
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from megatron_spark.progress import ProgressReport
from megatron_spark.rollout.protocol import Completion, SamplingParams
from megatron_spark.train.metrics import MetricsConfig, MetricsLogger, WandbConfig

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (.*)$")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(capsys) -> list[str]:
    out = capsys.readouterr().out.splitlines()
    assert all(LINE.match(line) for line in out), out
    return [LINE.match(line).group(1) for line in out]


def test_not_a_terminal_prints_a_line_every_period(capsys):
    # pytest captures stdout: not a terminal, as under SLURM.
    clock = FakeClock()
    p = ProgressReport("train", 10, unit="steps", every_s=3.0, clock=clock)
    assert not p.live
    for step in range(1, 11):
        clock.now += 1.0  # one second per step
        p.update(completed=step, info=f"loss={1 / step:.3g}")
    p.close()
    lines = _lines(capsys)
    # The start, then every 3 s (steps 3, 6, 9), then the end (step 10).
    assert [int(re.match(r"train (\d+)/10", line).group(1)) for line in lines] == [0, 3, 6, 9, 10]
    assert lines[0].startswith("train 0/10 steps (0%) elapsed 0:00:00")
    assert lines[1] == "train 3/10 steps (30%) elapsed 0:00:03 eta 0:00:07 loss=0.333"
    assert lines[-1] == "train 10/10 steps (100%) elapsed 0:00:10 loss=0.1"


def test_the_last_line_is_not_repeated_and_a_growing_total_is_shown(capsys):
    clock = FakeClock()
    p = ProgressReport("generate self-reflect", 4, unit="sequences", every_s=0.0, clock=clock)
    p.update(advance=4)
    p.update(total=6)
    p.update(advance=2)
    p.close()
    lines = _lines(capsys)
    assert [line.split(" elapsed")[0] for line in lines] == [
        "generate self-reflect 0/4 sequences (0%)",
        "generate self-reflect 4/4 sequences (100%)",
        "generate self-reflect 4/6 sequences (66%)",
        "generate self-reflect 6/6 sequences (100%)",
    ]


def test_metrics_logger_prints_progress_lines_with_the_console_metrics(tmp_path, capsys):
    log = MetricsLogger(
        tmp_path, True, 3, title="sft", config=MetricsConfig(tensorboard=False, progress_every_s=0.0)
    )
    for step in (1, 2, 3):
        log.log(step, {"train/loss": 0.5 / step})
    log.close()
    lines = _lines(capsys)
    assert [line.split(" elapsed")[0] for line in lines] == [
        f"sft {k}/3 steps ({100 * k // 3}%)" for k in range(4)
    ]
    assert lines[-1].endswith("loss=0.167")
    assert not (tmp_path / "tensorboard").exists()  # metrics.tensorboard=false
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def _wandb_records(path: str) -> list:
    """The protobuf records of a ``.wandb`` file (wandb's LevelDB-style log: a 7-byte file header,
    32 KiB blocks of records, each with a 7-byte header: CRC, length, fragment type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    block, pos, records, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def test_wandb_offline_writes_the_records_under_the_run_dir(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # and no network: nothing may be uploaded
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = MetricsConfig(tensorboard=False, wandb=WandbConfig(enabled=True, project="test", tags=("unit",)))
    log = MetricsLogger(tmp_path, True, 2, title="train", config=cfg, run_config={"seed": 7})
    log.log(1, {"train/loss": 0.25, "train/grad_norm": float("nan")})
    log.log(2, {"train/loss": 0.125, "eval/accuracy": 0.5})
    log.close()
    files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, sorted(p.name for p in (tmp_path / "wandb").rglob("*"))
    records = _wandb_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "test" and run.display_name == tmp_path.name and list(run.tags) == ["unit"]
    assert {u.key: json.loads(u.value_json) for u in run.config.update}["seed"] == 7
    history = {
        r.history.step.num: {
            (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
            for i in r.history.item
            if not (i.key or i.nested_key[0]).startswith("_")
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    }
    # Non-finite values are left out, as in TensorBoard.
    assert history == {1: {"train/loss": 0.25}, 2: {"train/loss": 0.125, "eval/accuracy": 0.5}}
    assert (tmp_path / "wandb" / "run_id").read_text().strip() == run.run_id


def test_wandb_enabled_without_the_package_is_a_config_error(monkeypatch):
    import importlib.util

    from megatron_spark.config import load_config
    from megatron_spark.errors import UserError
    from megatron_spark.train.config import RunConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"metrics.wandb.*pip install 'megatron_spark\[wandb\]'"):
        load_config(RunConfig, None, ["metrics.wandb.enabled=true"])


_CFG = SimpleNamespace(
    rollout=SimpleNamespace(max_batch_sequences=2), metrics=MetricsConfig(progress_every_s=0.0)
)


class _FakeClient:
    """What GenerationProgress uses of a RolloutClient: its rank and its generate."""

    def __init__(self):
        self.par = SimpleNamespace(rank=0)
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append(([p[0] for p in prompts], params.first_row))
        return [Completion(list(p), [p[0] + 100], [0.0], "stop") for p in prompts]


def test_generation_progress_counts_every_sequence_under_the_phase_label(capsys):
    from megatron_spark.eval.progress import GenerationProgress

    s = _FakeClient()
    progress = GenerationProgress(s, _CFG, "generate", "self-reflect", stderr=True)
    out = s.generate([[1], [2], [3], [4], [5]], SamplingParams(first_row=10))
    # Pieces of max_batch_sequences prompts, each sampled as its rows of the whole call would be.
    assert s.calls == [([1, 2], 10), ([3, 4], 12), ([5], 14)]
    assert [c.token_ids for c in out] == [[101], [102], [103], [104], [105]]
    s.generate([[6]], SamplingParams())  # a second round of the same phase: the total grows
    progress.phase("best-of-n")
    s.generate([[7], [8]], SamplingParams())
    progress.close()
    assert s.generate.__func__ is _FakeClient.generate  # the client's own method is back
    captured = capsys.readouterr()
    assert captured.out == ""  # generate's stdout holds its rows only
    lines = [LINE.match(line).group(1).split(" elapsed")[0] for line in captured.err.splitlines()]
    assert lines == [
        "generate self-reflect 0/5 sequences (0%)",
        "generate self-reflect 2/5 sequences (40%)",
        "generate self-reflect 4/5 sequences (80%)",
        "generate self-reflect 5/5 sequences (100%)",
        "generate self-reflect 5/6 sequences (83%)",
        "generate self-reflect 6/6 sequences (100%)",
        "generate best-of-n 0/2 sequences (0%)",
        "generate best-of-n 2/2 sequences (100%)",
    ]


def test_generation_progress_is_silent_off_rank_zero(capsys):
    from megatron_spark.eval.progress import GenerationProgress

    s = _FakeClient()
    s.par.rank = 1
    progress = GenerationProgress(s, _CFG, "eval", "reasoning")
    s.generate([[1], [2], [3]], SamplingParams())
    progress.close()
    assert s.calls == [([1, 2], 0), ([3], 2)]  # the same pieces as rank 0: collectives line up
    assert capsys.readouterr() == ("", "")

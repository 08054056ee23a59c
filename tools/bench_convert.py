"""Benchmark: HF <-> Megatron conversion of a random ~1B Llama-shaped checkpoint on the CPU.

Prints, for each direction, GB/s next to the limit measured in the same run (a plain file copy of
the same bytes) and the peak resident memory of the converting process next to the checkpoint
size. Targets (docs/performance.md): >= 50% of copy bandwidth, peak RSS <= 1.5x checkpoint.

    python tools/bench_convert.py [--workdir DIR] [--layers 16] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import re, sys, time
from megatron_spark.checkpoint.convert import hf_to_megatron, megatron_to_hf
import megatron.core.models.gpt.gpt_model, megatron.core.dist_checkpointing  # imports are not timed
t0 = time.perf_counter()
if sys.argv[1] == "hf-to-megatron":
    hf_to_megatron(sys.argv[2], sys.argv[3])
else:
    megatron_to_hf(sys.argv[2], sys.argv[3])
elapsed = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec from the parent.
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(elapsed, hwm)
"""
BASELINE = """
import re
import megatron_spark.checkpoint.convert, megatron.core.models.gpt.gpt_model, torch.distributed.checkpoint
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024)
"""


def llama_1b_config(layers: int, dtype: str) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
    }


def write_random_checkpoint(cfg: dict, out: Path) -> int:
    import torch

    from megatron_spark.checkpoint.io import save_hf_tensors
    from megatron_spark.checkpoint.mapping import expected_hf_shapes
    from megatron_spark.model.builder import DTYPES
    from megatron_spark.model.config import arch_from_hf_config

    arch = arch_from_hf_config(cfg)
    dtype = DTYPES[cfg["torch_dtype"]]
    gen = torch.Generator().manual_seed(0)
    total = 0

    def tensors():
        nonlocal total
        for name, shape in expected_hf_shapes(arch).items():
            t = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
            total += t.numel() * t.element_size()
            yield name, t

    out.mkdir(parents=True)
    save_hf_tensors(tensors(), out, 2 * 10**9)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return total


def run_child(code: str, *args: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()[-2:]] if args else [float(out.stdout.split()[-1])]


def copy_rate(src: Path, dst: Path) -> float:
    """Bytes/s of a plain copy of every file under ``src``, fsynced like the converters' output
    (the limit for a conversion: read the same bytes, write them durably)."""
    files = [p for p in src.rglob("*") if p.is_file()]
    nbytes = sum(p.stat().st_size for p in files)
    dst.mkdir()
    t0 = time.perf_counter()
    for i, p in enumerate(files):
        target = dst / f"{i}_{p.name}"
        shutil.copyfile(p, target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
    return nbytes / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--layers", type=int, default=16, help="decoder layers (16 -> ~1.1B parameters)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        hf = work / "hf"
        nbytes = write_random_checkpoint(llama_1b_config(args.layers, args.dtype), hf)
        baseline = run_child(BASELINE)[0]
        rows = []
        for direction, src, dst in (
            ("hf-to-megatron", hf, work / "mcore"),
            ("megatron-to-hf", work / "mcore", work / "hf_out"),
        ):
            seconds, peak = run_child(CHILD, direction, str(src), str(dst))
            limit = copy_rate(src, work / f"copy_{direction}")
            rows.append((direction, nbytes / seconds, limit, peak))
        print(
            f"checkpoint: {nbytes / 1e9:.2f} GB ({args.dtype}, {args.layers} layers); "
            f"import baseline RSS {baseline / 1e9:.2f} GB"
        )
        print(
            f"{'direction':<16} {'GB/s':>7} {'copy GB/s':>10} {'ratio':>6} {'peak RSS GB':>12} {'x ckpt':>7} {'x ckpt net':>11}"
        )
        for direction, rate, limit, peak in rows:
            print(
                f"{direction:<16} {rate / 1e9:7.2f} {limit / 1e9:10.2f} {rate / limit:6.2f} {peak / 1e9:12.2f} "
                f"{peak / nbytes:7.2f} {(peak - baseline) / nbytes:11.2f}"
            )
        print(
            "targets: ratio >= 0.50, peak RSS <= 1.50 x checkpoint "
            "(conversion timed after Python imports; peak RSS includes them)"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark: weight sync through the WeightBridge at TP=2 on the CPU, next to a memory copy.

Two gloo processes hold a Llama-shaped Megatron model split TP=2 with random bf16 weights (the
~1.1B shape of bench_convert.py, or the tiny-llama preset with ``--size small``); rank 0 hosts an
HFEngine in bf16 that receives every tensor. ``bridge.sync(engine)`` is timed after one warm-up.
The limit, measured in the same run by rank 0: ``dst.copy_(src)`` of one flat tensor of the same
bytes (a sync must at least write every byte of the engine's weights once). Target: sync
bandwidth >= 50% of copy bandwidth. Peak memory is VmHWM per rank, reset just before the first
sync (so model building does not count), next to the resident memory then (model + engine):
``extra`` is what a sync costs on top.

TP peers hand each other their pieces through shared memory (``BridgeConfig.shared_memory``, set
the default) or, with ``--gloo``, as gloo messages; the header says which ran.

``--profile`` adds rows that say where the time goes, each timed on its own: the same sync with
the other transport (a second bridge), rank 1's TP-split bytes sent to rank 0 in one gloo message
(the floor of any TP=2 sync over gloo), the bridge's
stream drained without an engine (TP transfers + packing the HF tensors into buckets; the rest of
a sync is the engine's copy), and ``export_hf_tensors`` alone (the checkpoint exporter's
per-parameter all-gather + ``torch.cat``).

    python tools/bench_bridge.py [--size 1b|small] [--bucket-mb 256] [--repeats 3] [--gloo] [--profile]

The script re-launches itself under torchrun (2 processes, OMP_NUM_THREADS=1 unless set).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def read_status_kb(field: str) -> int:
    """A memory field of /proc/self/status in bytes (VmHWM: peak resident, VmRSS: resident now)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def hf_config(size: str) -> dict:
    from megatron_spark.model.config import PRESETS

    if size == "small":
        return {**PRESETS["tiny-llama"], "torch_dtype": "bfloat16"}
    from bench_convert import llama_1b_config  # tools/ is on sys.path: this script's folder

    return llama_1b_config(layers=16, dtype="bfloat16")


def timed(fn, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` on every rank, each fenced by barriers."""
    import torch.distributed as dist

    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        dist.barrier()
        times.append(time.perf_counter() - start)
    return times


def copy_seconds(nbytes: int, repeats: int) -> list[float]:
    """``dst.copy_(src)`` of one flat tensor of ``nbytes`` (pages touched first), in seconds."""
    import torch

    src = torch.ones(nbytes // 2, dtype=torch.bfloat16)
    dst = torch.zeros_like(src)
    dst.copy_(src)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return times


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from megatron_spark import platform
    from megatron_spark.checkpoint.mapping import export_hf_tensors
    from megatron_spark.model.builder import PrecisionConfig, build_model
    from megatron_spark.model.config import arch_from_hf_config
    from megatron_spark.rollout.bridge import BridgeConfig, WeightBridge
    from megatron_spark.rollout.hf_engine import HFEngine

    parallel = platform.ParallelConfig(tensor_parallel_size=2)
    platform.setup(parallel)
    from megatron.core import parallel_state as ps

    rank = dist.get_rank()
    arch = arch_from_hf_config(hf_config(args.size), source=f"--size {args.size}")
    model = build_model(arch, parallel, PrecisionConfig(params_dtype="bfloat16"))
    tp_group = ps.get_tensor_model_parallel_group()
    engine = HFEngine(arch.hf_config, dtype=torch.bfloat16) if rank == 0 else None
    bridge = WeightBridge(
        model,
        arch,
        receive=rank == 0,
        dtype=torch.bfloat16,
        config=BridgeConfig(bucket_mb=args.bucket_mb, shared_memory=not args.gloo),
        tp_group=tp_group,
        pp_group=ps.get_pipeline_model_parallel_group(),
    )
    other = None
    if args.profile:  # the same sync with the other transport
        other = WeightBridge(
            model,
            arch,
            receive=rank == 0,
            dtype=torch.bfloat16,
            config=BridgeConfig(bucket_mb=args.bucket_mb, shared_memory=args.gloo),
            tp_group=tp_group,
            pp_group=ps.get_pipeline_model_parallel_group(),
        )
    transport = "shared memory" if bridge._staging is not None else "gloo messages"
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak of the syncs alone
    rss_before = read_status_kb("VmRSS")
    nbytes = bridge.sync(engine)  # warm-up; also the byte count rank 0 received
    sync = timed(lambda: bridge.sync(engine), args.repeats)
    hwm = read_status_kb("VmHWM")

    stages = []
    if args.profile:
        split = [p for p in model.parameters() if getattr(p, "tensor_model_parallel", False)]
        flat = torch.cat([p.detach().reshape(-1) for p in split])  # this rank's TP-split bytes

        def send_split():
            # Rank 1's TP-split bytes to rank 0 in one message: what any TP=2 sync must move.
            if rank == 0:
                dist.recv(flat, src=1)
            else:
                dist.send(flat, dst=0)

        def drain(it):
            for _ in it:
                pass

        other_name = "gloo messages" if other._staging is None else "shared memory"
        other.sync(engine)  # warm-up
        stages = [
            (f"bridge.sync(engine), {other_name}", lambda: other.sync(engine)),
            ("gloo send of TP shards, 1 msg", send_split),
            ("bridge.stream(), no engine", lambda: drain(bridge.stream())),
            ("export_hf_tensors (all-gather)", lambda: drain(export_hf_tensors(model, arch, tp_group))),
        ]
        stages = [(name, timed(fn, args.repeats)) for name, fn in stages]
        del flat

    copy = copy_seconds(max(nbytes, 2), args.repeats) if rank == 0 else []
    report = {"rank": rank, "rss_before": rss_before, "hwm": hwm}
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)  # per-rank memory to rank 0
    if rank == 0:
        print_table(args, arch, nbytes, sync, copy, stages, reports, transport)
    platform.teardown()


def print_table(args, arch, nbytes, sync, copy, stages, reports, transport) -> None:
    params = nbytes / 2
    print(
        f"model: {args.size}, {params / 1e9:.3f}B parameters, {nbytes / 1e9:.3f} GB bf16 "
        f"({arch.num_layers} layers, hidden {arch.hidden_size}); TP=2 gloo, TP pieces through "
        f"{transport}, engine on rank 0; "
        f"bucket {args.bucket_mb:g} MiB; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
        f"best / median of {args.repeats}"
    )
    print(f"{'what':<34}{'best s':>9}{'median s':>10}{'GB/s':>8}")
    rows = [("bridge.sync(engine)", sync), ("limit: dst.copy_(src), same bytes", copy)]
    if stages:
        rows += [(f"  {name}", t) for name, t in stages]
    for name, t in rows:
        print(f"{name:<34}{min(t):>9.3f}{statistics.median(t):>10.3f}{nbytes / min(t) / 1e9:>8.2f}")
    ratio = min(copy) / min(sync)
    verdict = "met" if ratio >= 0.5 else "missed"
    print(f"ratio sync / copy bandwidth: {ratio:.2f} (target >= 0.50: {verdict})")
    print(f"{'rank':<6}{'RSS before sync GB':>20}{'peak (VmHWM) GB':>17}{'extra GB':>10}{'x model':>9}")
    for r in reports:
        extra = r["hwm"] - r["rss_before"]
        print(
            f"{r['rank']:<6}{r['rss_before'] / 1e9:>20.2f}{r['hwm'] / 1e9:>17.2f}{max(extra, 0) / 1e9:>10.2f}"
            f"{r['hwm'] / nbytes:>9.2f}"
        )
    print("(peak is read after the timed syncs, before the profile and copy buffers are allocated)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1b", choices=["1b", "small"])
    p.add_argument("--bucket-mb", type=float, default=256.0, help="bridge bucket size, MiB")
    p.add_argument("--repeats", type=int, default=3, help="timed syncs after one warm-up")
    p.add_argument("--gloo", action="store_true", help="TP pieces as gloo messages, not shared memory")
    p.add_argument("--profile", action="store_true", help="also time the sync's stages")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    subprocess.run([*cmd, __file__, *sys.argv[1:], "--worker"], env=env, cwd=REPO, check=True)


if __name__ == "__main__":
    main()

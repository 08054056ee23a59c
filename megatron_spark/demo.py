"""The tiny CPU demo (until training lands): a random tiny model goes HF -> Megatron, is scored
by Megatron and by transformers, and comes back to HF bit for bit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from megatron_spark.errors import UserError


def run_demo(run_dir: str | Path, preset: str, seed: int = 0) -> int:
    from rich.console import Console
    from rich.table import Table
    from safetensors.torch import load_file

    from megatron_spark import platform
    from megatron_spark.checkpoint.convert import hf_to_megatron, megatron_to_hf
    from megatron_spark.model.config import PRESETS
    from megatron_spark.model.hf_reference import make_random_hf_model, reference_logprobs
    from megatron_spark.score import score_file

    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; presets: {', '.join(sorted(PRESETS))}")
    console = Console()
    run = Path(run_dir).absolute()
    if run.exists() and any(run.iterdir()):
        raise UserError(f"{run}: run directory is not empty; choose another --run-dir")
    run.mkdir(parents=True, exist_ok=True)
    rows = []

    t0 = time.perf_counter()
    ref = make_random_hf_model(PRESETS[preset], run / "hf_init", seed=seed)
    rows.append(("random HF model", str(run / "hf_init"), time.perf_counter() - t0))

    t0 = time.perf_counter()
    hf_to_megatron(run / "hf_init", run / "megatron")
    rows.append(("convert hf-to-megatron", str(run / "megatron"), time.perf_counter() - t0))

    gen = torch.Generator().manual_seed(seed)
    vocab = PRESETS[preset]["vocab_size"]
    seqs = [torch.randint(0, vocab, (int(n),), generator=gen).tolist() for n in (5, 17, 33, 64, 9)]
    (run / "sequences.jsonl").write_text("".join(json.dumps({"tokens": s}) + "\n" for s in seqs))
    t0 = time.perf_counter()
    score_file(
        str(run / "megatron"),
        str(run / "sequences.jsonl"),
        str(run / "logprobs.jsonl"),
        platform.ParallelConfig(),
    )
    rows.append(("logprobs (Megatron, packed)", str(run / "logprobs.jsonl"), time.perf_counter() - t0))

    ours = [json.loads(line)["logprobs"] for line in (run / "logprobs.jsonl").read_text().splitlines()]
    theirs = reference_logprobs(ref, seqs)
    max_diff = max(
        (torch.tensor(o, dtype=torch.float64) - r).abs().max().item() for o, r in zip(ours, theirs)
    )

    t0 = time.perf_counter()
    megatron_to_hf(run / "megatron", run / "hf_export")
    rows.append(("convert megatron-to-hf", str(run / "hf_export"), time.perf_counter() - t0))
    a, b = (
        load_file(run / "hf_init" / "model.safetensors"),
        load_file(run / "hf_export" / "model.safetensors"),
    )
    identical = a.keys() == b.keys() and all(
        torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a
    )

    table = Table(title=f"megatron_spark demo ({preset}) in {run}")
    for col in ("stage", "output", "seconds"):
        table.add_column(col)
    for stage, out, sec in rows:
        table.add_row(stage, str(Path(out).relative_to(run)), f"{sec:.1f}")
    console.print(table)
    console.print(f"max |log-prob(Megatron) - log-prob(transformers)| = {max_diff:.2e} (float32)")
    console.print(f"HF -> Megatron -> HF round trip bit-identical: {identical}")
    console.print(f"run directory: {run}")
    return 0 if identical and max_diff < 1e-5 else 1

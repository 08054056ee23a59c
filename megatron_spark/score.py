"""``megatron-spark logprobs``: per-token log-probabilities of given token sequences at any TP/PP.

Input: jsonl, one object per line with ``"tokens": [int, ...]`` (other keys are kept). Output: the
same objects with ``"logprobs"``: ``len(tokens) - 1`` floats, ``logprobs[i]`` = log p(tokens[i+1] |
tokens[:i+1]). Sequences are packed into micro-batches of at most ``max_tokens_per_batch`` tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from megatron_spark import platform
from megatron_spark.data.datasets import read_jsonl
from megatron_spark.errors import UserError
from megatron_spark.model.builder import PrecisionConfig
from megatron_spark.model.forward import pack, run_packed, split_logprobs
from megatron_spark.outputs import atomic_file, check_output


def read_token_jsonl(path: str | Path) -> list[dict]:
    """Rows of a tokens jsonl file; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such input file")
    rows = []
    for lineno, row in read_jsonl(path):
        tokens = row.get("tokens") if isinstance(row, dict) else None
        if (
            not isinstance(tokens, list)
            or not tokens
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens)
        ):
            raise UserError(
                f"{path}:{lineno}: expected an object with a non-empty list of ints under 'tokens'"
            )
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no sequences")
    return rows


def batch_by_tokens(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Greedy, order-preserving groups of indices whose lengths sum to at most ``max_tokens``
    (a longer sequence gets a group of its own)."""
    groups: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lengths):
        if groups[-1] and used + n > max_tokens:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


def score_file(
    model_path: str,
    input_path: str,
    out_path: str,
    parallel: platform.ParallelConfig,
    params_dtype: str | None = None,
    max_tokens_per_batch: int = 4096,
    overwrite: bool = False,
) -> Path | None:
    """Score every sequence of ``input_path``; the writer rank returns the output path."""
    from megatron.core import parallel_state

    from megatron_spark.checkpoint.convert import load_pretrained, read_arch

    out = Path(out_path)
    inputs = [("--input", input_path), ("--model", model_path)]
    check_output(out, overwrite, inputs)  # before loading the model
    rows = read_token_jsonl(input_path)
    read_arch(model_path).check_parallel(parallel.tensor_parallel_size, parallel.pipeline_parallel_size)
    precision = PrecisionConfig(params_dtype=params_dtype) if params_dtype else None
    platform.setup(parallel)
    model, arch = load_pretrained(model_path, parallel, precision)
    for lineno, row in enumerate(rows, start=1):
        bad = [t for t in row["tokens"] if not 0 <= t < arch.vocab_size]
        if bad:
            raise UserError(
                f"{input_path}: sequence {lineno} has token id {bad[0]} outside [0, {arch.vocab_size})"
            )
        if len(row["tokens"]) > arch.max_position_embeddings:
            raise UserError(
                f"{input_path}: sequence {lineno} has {len(row['tokens'])} tokens, more than the "
                f"model's max_position_embeddings {arch.max_position_embeddings}"
            )
    model.eval()
    groups = batch_by_tokens([len(r["tokens"]) for r in rows], max_tokens_per_batch)
    batches = [pack([rows[i]["tokens"] for i in g]) for g in groups]
    results = [r["logprobs"] for r in run_packed(model, arch.vocab_size, batches)]
    is_writer = (
        parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    )
    written = None
    if is_writer and parallel_state.get_data_parallel_rank() == 0:
        with atomic_file(out, overwrite, inputs) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for group, batch, logprobs in zip(groups, batches, results):
                for i, lps in zip(group, split_logprobs(logprobs, batch)):
                    f.write(json.dumps({**rows[i], "logprobs": lps}) + "\n")
        written = out
    dist.barrier()
    return written

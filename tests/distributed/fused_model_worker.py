"""torchrun worker: inside the model at (TP, PP), the fused head's loss, log-probs and every
parameter gradient equal the unfused path's, and a group's prompt packed once gives what packing
every sample whole gives (each rank compares its own shards); rank 0 writes "ok" to --out.

    torchrun --nproc-per-node TP*PP tests/distributed/fused_model_worker.py --tp T --pp P [--sp] --hf DIR --out F
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron_spark import platform  # noqa: E402
from megatron_spark.checkpoint.convert import load_pretrained  # noqa: E402
from megatron_spark.kernels.fused_head import TileConfig  # noqa: E402
from megatron_spark.model.forward import pack  # noqa: E402
from megatron_spark.train.loss import LossConfig, TokenInputs  # noqa: E402
from tests.fused_paths import assert_fused_equals_unfused  # noqa: E402
from tests.shared_prompt_paths import assert_shared_equals_whole  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--pp", type=int, required=True)
    p.add_argument("--sp", action="store_true", help="sequence parallelism")
    p.add_argument("--hf", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    parallel = platform.ParallelConfig(
        tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp, sequence_parallel=args.sp
    )
    platform.setup(parallel)
    model, arch = load_pretrained(args.hf, parallel)
    gen = torch.Generator().manual_seed(8)
    # 12 and 27 tokens per micro-batch: under SP the second is padded to a multiple of TP.
    seqs = [torch.randint(0, arch.vocab_size, (n,), generator=gen).tolist() for n in (9, 3, 21, 6)]
    batches = [pack(seqs[:2]), pack(seqs[2:])]
    inputs = {}
    for b in batches:  # identical draws on every rank
        t = b.num_tokens
        r = lambda lo, hi, t=t: lo + (hi - lo) * torch.rand(t, generator=gen)  # noqa: E731
        inputs[b] = TokenInputs(
            torch.zeros(t, dtype=torch.long),
            r(-6, -2),
            r(-6, -2),
            r(-1.5, 1.5),
            r(0, 0.05),
            r(0, 0.01),
            torch.zeros(t),
            r(0, 0.05),
        )
    tiles = TileConfig(token_chunk=16, vocab_chunk=64)
    where = f"rank {dist.get_rank()}"
    assert_fused_equals_unfused(
        model, arch.vocab_size, batches, inputs, LossConfig(dual_clip=3.0), tiles, where
    )
    assert_shared_equals_whole(model, arch.vocab_size, where=f"shared prompts, rank {dist.get_rank()}")
    dist.barrier()
    if dist.get_rank() == 0:
        Path(args.out).write_text("ok\n")
    platform.teardown()


if __name__ == "__main__":
    main()

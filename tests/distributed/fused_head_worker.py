"""torchrun worker (2 processes): the fused head with the vocabulary split over the TP group
equals the unsplit head computed in the same process; writes "ok" to --out on success.

    torchrun --nproc-per-node 2 tests/distributed/fused_head_worker.py --out F
"""

import argparse
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron_spark import platform  # noqa: E402
from megatron_spark.kernels.fused_head import TileConfig  # noqa: E402
from megatron_spark.train.loss import LossConfig, fused_loss  # noqa: E402
from tests.unit.test_fused_head import assert_rel, make_problem  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    rank, world = platform.init_distributed()
    for seed, padded in ((1, 64), (2, 54)):  # 54: the second rank's rows end in padding
        x, w, inp, vocab = make_problem(seed, padded=padded)  # same draw on every rank
        cfg, tiles = LossConfig(dual_clip=3.0), TileConfig(vocab_size=vocab, token_chunk=8, vocab_chunk=16)
        full_x, full_w = x.clone().requires_grad_(), w.clone().requires_grad_()
        ref = fused_loss(full_x, full_w, inp, cfg, tiles)
        ref.loss.backward()

        rows = padded // world
        shard_w = w[rank * rows : (rank + 1) * rows].clone().requires_grad_()
        tp_x = x.clone().requires_grad_()
        out = fused_loss(tp_x, shard_w, inp, cfg, tiles, vocab_start=rank * rows, tp_group=dist.group.WORLD)
        out.loss.backward()

        assert_rel(out.loss, ref.loss, 1e-6, "loss")
        assert_rel(out.logprobs, ref.logprobs, 1e-6, "logprobs")
        assert_rel(out.entropy, ref.entropy, 1e-6, "entropy")
        assert out.clip_fraction.item() == ref.clip_fraction.item()
        assert_rel(tp_x.grad, full_x.grad, 1e-6, "dX (all-reduced over TP)")
        assert_rel(shard_w.grad, full_w.grad[rank * rows : (rank + 1) * rows], 1e-6, "dW shard")
    if rank == 0:
        Path(args.out).write_text("ok\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""torchrun worker: after a weight sync through the bridge, the HF engine's sampling log-probs
equal the Megatron model's teacher-forced log-probs (float32, 1e-5), before and after an optimizer
step; rank 0 writes a JSON report to --out. With --every-rank each rank hosts an engine (as vLLM's
tensor parallelism needs full tensors on every TP rank): each TP rank then both sends and receives,
and every engine must sample what rank 0's does.

    torchrun --nproc-per-node TP*PP tests/distributed/bridge_worker.py --tp T --pp P --hf DIR --out F
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megatron_spark import platform  # noqa: E402
from megatron_spark.checkpoint.convert import load_pretrained  # noqa: E402
from megatron_spark.model.forward import pack, run_packed, split_logprobs  # noqa: E402
from megatron_spark.rollout.bridge import BridgeConfig, WeightBridge  # noqa: E402
from megatron_spark.rollout.hf_engine import HFEngine  # noqa: E402
from megatron_spark.rollout.protocol import SamplingParams  # noqa: E402
from megatron_spark.train.optim import OptimConfig, Optimizer  # noqa: E402
from megatron_spark.train.setup import wrap_ddp  # noqa: E402


def engine_vs_trainer(model, arch, engine, bridge, mp_group, seed: int) -> tuple[float, list]:
    """Sync, sample on the engine rank, score the samples teacher-forced on the trainer; returns
    the largest |difference| (valid on every rank) and the engine's log-probs."""
    bridge.sync(engine)
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, arch.vocab_size, (n,), generator=gen).tolist() for n in (5, 1, 9, 3)]
    result = [None]
    if engine is not None:
        result = [engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=6, seed=seed))]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, result[0])
    if any(theirs is not None and theirs != everyone[0] for theirs in everyone):
        raise AssertionError("engines of one replica sampled differently: their weights differ")
    completions = everyone[0]  # rank 0's samples, on every rank
    batch = pack([c.prompt_ids + c.token_ids for c in completions])
    out = run_packed(model, arch.vocab_size, [batch])
    diff = torch.zeros((), dtype=torch.float64)
    if out:
        per_seq = split_logprobs(out[0]["logprobs"].cpu(), batch)
        for c, lp in zip(completions, per_seq):
            mine = torch.tensor(lp[len(c.prompt_ids) - 1 :], dtype=torch.float64)
            diff = torch.maximum(diff, (mine - torch.tensor(c.logprobs, dtype=torch.float64)).abs().max())
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)  # from the last stage to everyone
    return float(diff), [c.logprobs for c in completions]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--pp", type=int, required=True)
    p.add_argument("--hf", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bucket-mb", type=float, default=0.05)
    p.add_argument("--bucketed", action="store_true", help="never write into the engine in place")
    p.add_argument("--gloo", action="store_true", help="TP pieces as gloo messages, not shared memory")
    p.add_argument(
        "--private-shm",
        action="store_true",
        help="every rank its own staging folder, as in containers without a shared /dev/shm",
    )
    p.add_argument("--every-rank", action="store_true", help="an engine on every rank, not only rank 0")
    args = p.parse_args()
    parallel = platform.ParallelConfig(tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp)
    platform.setup(parallel)
    from megatron.core import parallel_state as ps

    if args.private_shm:
        import megatron_spark.rollout.bridge as bridge_module

        bridge_module.SHM_DIR = str(Path(args.out).parent / f"shm_rank{dist.get_rank()}")
        Path(bridge_module.SHM_DIR).mkdir(exist_ok=True)
    model, arch = load_pretrained(args.hf, parallel)
    model = wrap_ddp(model)  # as the trainer does: tied embeddings stay tied across stages
    host = args.every_rank or dist.get_rank() == 0
    engine = HFEngine(arch.hf_config) if host else None
    bridge = WeightBridge(
        model,
        arch,
        receive=host,
        config=BridgeConfig(  # many small buckets
            bucket_mb=args.bucket_mb, write_in_place=not args.bucketed, shared_memory=not args.gloo
        ),
        tp_group=ps.get_tensor_model_parallel_group(),
        pp_group=ps.get_pipeline_model_parallel_group(),
    )
    before, lp_before = engine_vs_trainer(model, arch, engine, bridge, ps.get_model_parallel_group(), 1)

    # One optimizer step on some loss: the engine must follow the new weights.
    opt = Optimizer(model, OptimConfig(lr=3e-2, clip_grad_norm=0.0), 1, ps.get_model_parallel_group())
    batch = pack([list(range(3, 40)), list(range(50, 60))])
    run_packed(model, arch.vocab_size, [batch], loss_fn=lambda lp, b: -lp.sum() / 45, forward_only=False)
    grad_norm, applied = opt.step()
    after, lp_again = engine_vs_trainer(model, arch, engine, bridge, ps.get_model_parallel_group(), 1)
    if dist.get_rank() == 0:
        moved = max(abs(a - b) for x, y in zip(lp_before, lp_again) for a, b in zip(x, y))
        report = {"before": before, "after": after, "applied": applied, "moved": moved}
        report["shared_memory"] = bridge.transport == "shared memory"
        Path(args.out).write_text(json.dumps(report))
    platform.teardown()


if __name__ == "__main__":
    main()

"""torchrun worker: load HF models at (TP, PP) directly from safetensors, run a weighted log-prob
loss through megatron's schedule (2 micro-batches), and save the log-probs and the gradients
reassembled into full Hugging Face tensors (rank 0 writes them).

    torchrun --nproc-per-node N tests/distributed/grad_worker.py --tp T --pp P [--sp] --out F FAMILY=HF_DIR ...
"""

import argparse

import torch
import torch.distributed as dist

from megatron_spark import platform
from megatron_spark.checkpoint.convert import load_pretrained
from megatron_spark.checkpoint.mapping import export_hf_tensors
from megatron_spark.model.forward import pack, run_packed, split_logprobs

LENGTHS = (1, 7, 16, 3, 40, 2)


def problem(vocab: int):
    """The same sequences and per-token loss weights in every process and in the test."""
    gen = torch.Generator().manual_seed(11)
    seqs = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in LENGTHS]
    weights = [torch.rand(n, generator=gen, dtype=torch.float64) for n in LENGTHS]
    return seqs, weights


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tp", type=int, required=True)
    p.add_argument("--pp", type=int, required=True)
    p.add_argument("--sp", action="store_true", help="sequence parallelism")
    p.add_argument("--out", required=True)
    p.add_argument("models", nargs="+")
    args = p.parse_args()
    parallel = platform.ParallelConfig(
        tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp, sequence_parallel=args.sp
    )
    platform.setup(parallel)
    from megatron.core import parallel_state

    results = {}
    for spec in args.models:
        family, hf_dir = spec.split("=", 1)
        model, arch = load_pretrained(hf_dir, parallel)
        seqs, weights = problem(arch.vocab_size)
        batches = [pack(seqs[:3]), pack(seqs[3:])]
        flat = [torch.cat(weights[:3]).float(), torch.cat(weights[3:]).float()]

        def loss_fn(logprobs, batch, batches=batches, flat=flat):
            return -(logprobs * flat[batches.index(batch)]).sum()

        out = [
            r["logprobs"]
            for r in run_packed(model, arch.vocab_size, batches, loss_fn=loss_fn, forward_only=False)
        ]
        logprobs = [lp for b, o in zip(batches, out) for lp in split_logprobs(o, b)] if out else None
        for param in model.parameters():
            if getattr(param, "sequence_parallel", False):
                # A norm weight saw this rank's sequence shard only: sum over the TP group, as
                # megatron's finalize_model_grads does in training (this model has no DDP wrapper).
                dist.all_reduce(param.grad, group=parallel_state.get_tensor_model_parallel_group())
        grads = {
            n: t.clone()
            for n, t in export_hf_tensors(
                model,
                arch,
                parallel_state.get_tensor_model_parallel_group(),
                grads=True,
                include_tied_copy=True,
            )
        }
        gathered = [None] * dist.get_world_size()
        # Every rank's stage-local gradients and log-probs, to rank 0 (gloo, tiny tensors).
        dist.all_gather_object(gathered, (logprobs, grads))
        merged, all_logprobs = {}, None
        for lps, g in gathered:
            all_logprobs = lps if lps is not None else all_logprobs
            for name, t in g.items():
                merged.setdefault(name, t)  # TP/DP replicas hold identical copies: keep one
        if arch.tie_word_embeddings and "lm_head.weight" in merged:
            # PP > 1 with tied embeddings: the last stage's output-layer copy has its own
            # gradient; the tied parameter's gradient is the sum of both uses.
            merged["model.embed_tokens.weight"] = merged["model.embed_tokens.weight"] + merged.pop(
                "lm_head.weight"
            )
        results[family] = {"logprobs": all_logprobs, "grads": merged}
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    platform.teardown()


if __name__ == "__main__":
    main()

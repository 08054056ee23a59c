"""Benchmark: HFEngine sampling throughput on a tiny preset, on the CPU.

Prints generated tokens per second next to the limit measured in the same run: one teacher-forced
forward over the finished sequences (the same model FLOPs in a single batched pass, no KV cache and
no sequential decode steps), so ``ratio`` is the price of decoding one token at a time.

``--samples-per-prompt N`` sends each prompt N times, as a GRPO group does (``--prompts`` counts
them all). The engine then prefills each distinct prompt once; the limit's forward still runs
every copy, so it is the unshared cost.

    python tools/bench_rollout.py [--preset tiny-llama] [--prompts 256] [--new-tokens 20]
        [--samples-per-prompt 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from megatron_spark.model.config import PRESETS
from megatron_spark.rollout import SamplingParams
from megatron_spark.rollout.hf_engine import HFEngine


def best_of(repeats: int, fn) -> float:
    """Smallest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-llama", choices=sorted(PRESETS))
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="copies of each prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = PRESETS[args.preset]
    engine = HFEngine(cfg)
    engine.update_weights(HFEngine(cfg).model.state_dict().items())  # any complete set of weights
    gen = torch.Generator().manual_seed(0)
    distinct = -(-args.prompts // args.samples_per_prompt)
    lengths = torch.randint(12, 28, (distinct,), generator=gen).tolist()
    prompts = [torch.randint(3, cfg["vocab_size"], (n,), generator=gen).tolist() for n in lengths]
    prompts = [p for p in prompts for _ in range(args.samples_per_prompt)][: args.prompts]
    params = SamplingParams(max_new_tokens=args.new_tokens)
    engine.generate(prompts[:8], SamplingParams(max_new_tokens=2))  # warm-up

    completions = engine.generate(prompts, params)
    generated = sum(len(c.token_ids) for c in completions)
    sequences = [c.prompt_ids + c.token_ids for c in completions]
    prompt_lens = [len(c.prompt_ids) for c in completions]
    t_generate = best_of(args.repeats, lambda: engine.generate(prompts, params))
    t_forward = best_of(args.repeats, lambda: engine.logprobs(sequences, prompt_lens))

    print(
        f"{args.preset}: {args.prompts} prompts ({distinct} distinct) x {args.new_tokens} new tokens, "
        f"{args.threads} thread(s)"
    )
    print(f"{'what':<34}{'seconds':>9}{'tokens/s':>11}")
    print(f"{'generate (prefill + decode)':<34}{t_generate:>9.3f}{generated / t_generate:>11.0f}")
    print(f"{'limit: one teacher-forced forward':<34}{t_forward:>9.3f}{generated / t_forward:>11.0f}")
    print(f"ratio generate / limit: {t_generate / t_forward:.2f}")


if __name__ == "__main__":
    main()

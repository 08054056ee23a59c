"""Benchmark: fused loss head vs the naive path (materialised logits), on the CPU or a GPU.

For each shape, in one run: the naive path (logits = X W^T, log_softmax in float32, the same
objective, autograd backward), the fused head, and the GEMM limit (the achieved FLOP rate of a plain
matmul of the same operands, applied to the 8*T*H*V FLOPs that forward + backward need). Each path
runs in its own process. Peak extra memory is measured above the inputs: on the CPU the peak RSS
(VmHWM after a reset, the gradients included); on CUDA the allocator's peak, shown with the
gradients of X and W and without them (the head's own working memory: megatron accumulates the
weight gradient into its existing buffer).

    python tools/bench_loss.py [--tokens 4096] [--hidden 1024] [--vocab 32768 131072] [--repeats 2]
    python tools/bench_loss.py --device cuda --dtype bfloat16 --tokens 8192 --hidden 3584 --vocab 152064

Targets (issue "Fused packed-sequence loss head"): on the CPU, extra memory <= 1/10 of naive,
time <= 1.1x naive, >= 60% of the GEMM limit; on a GPU at Qwen2.5-7B head shapes in bf16, >= 55%
of the bf16 GEMM rate and <= 0.5 GiB of working memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, re, sys, time
import torch
from megatron_spark.train.loss import LossConfig, TokenInputs, fused_loss, token_objective

mode, t, h, v, repeats = sys.argv[1], *map(int, sys.argv[2:6])
dev, dtype = torch.device(sys.argv[6]), getattr(torch, sys.argv[7])
cuda = dev.type == "cuda"
torch.manual_seed(0)
x = (torch.randn(t, h, device=dev) * 0.5).to(dtype).requires_grad_()
w = (torch.randn(v, h, device=dev) * 0.05).to(dtype).requires_grad_()
r = lambda: torch.rand(t, device=dev)
inp = TokenInputs(torch.randint(0, v, (t,), device=dev), -5 + r(), -5 + r(), r() - 0.5, r() * 1e-3,
                  r() * 1e-4, r() * 1e-4, r() * 1e-3)
cfg = LossConfig()

def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

def naive():
    logits = x @ w.t()
    logsm = torch.log_softmax(logits.float(), -1)
    logp = logsm.gather(1, inp.targets[:, None])[:, 0]
    entropy = -(logsm.exp() * logsm).sum(-1)
    loss = (token_objective(logp, inp, cfg)[0] - inp.entropy_weight * entropy).sum()
    loss.backward()

def fused():
    fused_loss(x, w, inp, cfg).loss.backward()

def gemm():
    # The operands' own matmul: its FLOP rate is the limit for 8*T*H*V FLOPs of work.
    return x.detach() @ w.detach().t()

fn = {"naive": naive, "fused": fused, "gemm": gemm}[mode]
sync = torch.cuda.synchronize if cuda else (lambda: None)
fn()  # warm-up (allocator, thread pool, kernel compilation)
x.grad = w.grad = None
sync()
if cuda:
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
else:
    base = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
times = []
for _ in range(repeats):
    x.grad = w.grad = None
    sync(); t0 = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t0)
grads = sum(g.numel() * g.element_size() for g in (x.grad, w.grad) if g is not None)
peak = torch.cuda.max_memory_allocated() if cuda else status("VmHWM")
print(json.dumps({"seconds": min(times), "peak_extra": peak - base, "grads": grads}))
"""


def run(mode: str, t: int, h: int, v: int, repeats: int, device: str, dtype: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(t), str(h), str(v), str(repeats), device, dtype],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--vocab", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per path (the best counts)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args()
    t, h = args.tokens, args.hidden
    cuda = args.device.startswith("cuda")
    print(f"device {args.device}, {args.dtype} operands")
    print(
        f"{'T':>5} {'H':>5} {'V':>7} {'path':>6} {'seconds':>8} {'x naive':>8} {'GFLOP/s':>8} "
        f"{'of GEMM':>8} {'extra MB':>9} {'x naive':>8}" + (f" {'w/o grads MB':>13}" if cuda else "")
    )
    for v in args.vocab:
        res = {m: run(m, t, h, v, args.repeats, args.device, args.dtype) for m in ("gemm", "naive", "fused")}
        flops = 8 * t * h * v
        gemm_rate = 2 * t * h * v / res["gemm"]["seconds"]
        for m in ("naive", "fused"):
            r = res[m]
            if "error" in r:
                print(f"{t:>5} {h:>5} {v:>7} {m:>6}  failed: {r['error']}")
                continue
            rate = flops / r["seconds"]
            ratio_t = r["seconds"] / res["naive"]["seconds"] if "error" not in res["naive"] else float("nan")
            ratio_m = (
                r["peak_extra"] / res["naive"]["peak_extra"] if "error" not in res["naive"] else float("nan")
            )
            print(
                f"{t:>5} {h:>5} {v:>7} {m:>6} {r['seconds']:8.4f} {ratio_t:8.2f} {rate / 1e9:8.1f} "
                f"{rate / gemm_rate:8.2f} {r['peak_extra'] / 2**20:9.0f} {ratio_m:8.3f}"
                + (f" {(r['peak_extra'] - r['grads']) / 2**20:13.0f}" if cuda else "")
            )
        print(
            f"{t:>5} {h:>5} {v:>7} {'GEMM':>6} limit {gemm_rate / 1e9:.1f} GFLOP/s "
            f"(plain X @ W^T of the same operands)"
        )
    if cuda:
        print("targets (GPU, Qwen2.5-7B head shapes, bf16): fused >= 0.55 of GEMM, <= 512 MB w/o grads")
    else:
        print("targets: fused time <= 1.10x naive, >= 0.60 of GEMM, extra memory <= 0.100x naive")


if __name__ == "__main__":
    main()

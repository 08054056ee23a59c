#!/usr/bin/env bash
# The checks a lent GPU machine runs (see docs/performance.md, "CUDA runs"): one command, logs and
# metrics under $OUT (default ./gpu_out). Stages are named on the command line, in order:
#   env      versions of the GPU, driver, torch, megatron-core, triton, transformers
#   parity   tests/gpu (NCCL, one process): log-probs vs transformers, compiled Triton epilogues
#   loss     tools/bench_loss.py at Qwen2.5-7B head shapes in bf16
#   grpo     the tiny SFT warm start then GRPO on CUDA (GRPO_STEPS steps, default the recipe's)
#   demo     the tiny SPARK demo on CUDA (DEMO_OVERRIDES passed through)
#   profile  cProfile of 6 GRPO steps of the random tiny model (top functions by own time)
# Wheels that the machine lacks (megatron-core, math-verify and its parser) are installed from
# .whl/ when present. Each stage has its own time limit (STAGE_TIMEOUT seconds, default 540).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
limit=${STAGE_TIMEOUT:-540}
stage() { echo "== $1 $(date -u +%T)"; }
for s in "$@"; do
    stage "$s"
    case $s in
    env)
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
        python3 -c "import sys,torch,megatron.core as m,triton,transformers as t;print(sys.version.split()[0],'torch',torch.__version__,'megatron-core',m.__version__,'triton',triton.__version__,'transformers',t.__version__)"
        ;;
    parity)
        timeout "$limit" python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/parity.log"
        ;;
    loss)
        timeout "$limit" python3 tools/bench_loss.py --device cuda --dtype bfloat16 --tokens 8192 --hidden 3584 \
            --vocab 152064 --repeats 5 2>&1 | tee "$OUT/bench_loss.log"
        ;;
    grpo)
        rm -rf runs/gpu-sft runs/gpu-grpo
        timeout "$limit" bash -c "python3 -m megatron_spark.cli sft examples/tiny_arith/sft.yaml run_dir=runs/gpu-sft \
            && python3 -m megatron_spark.cli train examples/tiny_arith/grpo.yaml run_dir=runs/gpu-grpo \
               model.init=runs/gpu-sft/checkpoints/step_000160 ${GRPO_STEPS:+train.num_steps=$GRPO_STEPS}" \
            >"$OUT/grpo.log" 2>&1
        echo "rc $?"; tail -n 5 "$OUT/grpo.log"
        cp runs/gpu-sft/metrics.jsonl "$OUT/sft_metrics.jsonl" 2>/dev/null
        cp runs/gpu-grpo/metrics.jsonl "$OUT/grpo_metrics.jsonl" 2>/dev/null
        ;;
    demo)
        rm -rf runs/gpu-demo
        timeout "$limit" python3 -m megatron_spark.cli demo --run-dir runs/gpu-demo ${DEMO_OVERRIDES:-} >"$OUT/demo.log" 2>&1
        echo "rc $?"; tail -n 25 "$OUT/demo.log"
        for d in sft spark; do cp runs/gpu-demo/$d/metrics.jsonl "$OUT/demo_${d}_metrics.jsonl" 2>/dev/null; done
        cp runs/gpu-demo/summary.json "$OUT/demo_summary.json" 2>/dev/null
        ;;
    profile)
        rm -rf runs/gpu-profile
        timeout "$limit" python3 -m cProfile -o "$OUT/grpo.prof" -m megatron_spark.cli train examples/tiny_arith/grpo.yaml \
            run_dir=runs/gpu-profile model.init=preset:tiny-llama train.num_steps=6 train.eval_every_steps=0 \
            train.save_every_steps=0 >"$OUT/profile.log" 2>&1
        echo "rc $?"
        python3 -c "import pstats,sys; pstats.Stats(sys.argv[1]).sort_stats('tottime').print_stats(25)" "$OUT/grpo.prof" \
            | tail -n 40 | tee "$OUT/profile_top.txt"
        ;;
    *) echo "unknown stage $s"; exit 2 ;;
    esac
done
stage done

#!/usr/bin/env bash
# Usage: examples/convert_and_score.sh HF_DIR TOKENS.jsonl WORK_DIR
# Converts HF_DIR, scores TOKENS.jsonl at TP=2 x PP=2 on 4 processes, exports back to HF.
set -euo pipefail
hf=$1 tokens=$2 work=$3
megatron-spark convert hf-to-megatron --hf "$hf" --out "$work/ckpt"
torchrun --nproc-per-node 4 -m megatron_spark.cli logprobs \
    --model "$work/ckpt" --input "$tokens" --out "$work/logprobs.jsonl" --tp 2 --pp 2
megatron-spark convert megatron-to-hf --ckpt "$work/ckpt" --out "$work/hf_export"
echo "log-probs: $work/logprobs.jsonl   exported model: $work/hf_export"

#!/usr/bin/env bash
# Launch SPARK (or the GRPO baseline) on Qwen2.5-7B: one torchrun per 8xH100 node, run on every
# node with the same settings except NODE_RANK. slurm.sbatch does this for you under SLURM.
#
# NOT RUN: written against megatron_spark's CLI and config classes, never executed on GPUs by this
# project (vLLM and Transformer Engine were never exercised on our machines).
#
# Usage (from the repository root, inside the NGC image built from Dockerfile.ngc):
#   examples/qwen2.5-7b/launch.sh [key=value ...] [--resume]
# Environment:
#   NNODES       nodes in the job (default 1)
#   NODE_RANK    this node's index, 0 .. NNODES-1 (default 0)
#   MASTER_ADDR  host name or address of node 0 (default 127.0.0.1)
#   MASTER_PORT  a free TCP port on node 0 (default 29500)
#   CONFIG       run config (default examples/qwen2.5-7b/spark.yaml; grpo.yaml for the baseline)
#   RUN_DIR      output directory; on a filesystem every node shares, and the same on all nodes
#                (default runs/qwen2.5-7b-<config name>)
#   FP8=1        adds precision.fp8=hybrid (Transformer Engine FP8 GEMMs; bf16 when unset)
# Extra arguments are passed on: config overrides such as optim.lr=1e-6, or --resume to continue
# from RUN_DIR's latest checkpoint (a RUN_DIR that already holds checkpoints is refused without it).
set -euo pipefail

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
CONFIG=${CONFIG:-examples/qwen2.5-7b/spark.yaml}
RUN_DIR=${RUN_DIR:-runs/qwen2.5-7b-$(basename "$CONFIG" .yaml)}

overrides=("run_dir=$RUN_DIR")
if [[ "${FP8:-0}" == "1" ]]; then
    overrides+=("precision.fp8=hybrid")
fi

# NCCL hints: site-specific, so left commented. Uncomment and adapt to your fabric.
# export NCCL_DEBUG=WARN                    # INFO to see which transport and interfaces are chosen
# export NCCL_SOCKET_IFNAME=eth0            # the interface for NCCL's bootstrap / socket traffic
# export NCCL_IB_HCA=mlx5                   # the InfiniBand adapters to use between nodes
# export NCCL_IB_DISABLE=0                  # keep InfiniBand on (1 falls back to TCP sockets)
# export NCCL_NVLS_ENABLE=0                 # turn NVLink SHARP off if it misbehaves with colocated vLLM
# export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # fail fast instead of hanging on a dead peer
# export CUDA_DEVICE_MAX_CONNECTIONS=1      # the usual Megatron setting for TP communication order

echo "node ${NODE_RANK}/${NNODES} master ${MASTER_ADDR}:${MASTER_PORT} config ${CONFIG} run_dir ${RUN_DIR} fp8 ${FP8:-0}"

# torchrun's -m runs `python -m megatron_spark.cli` in each of the 8 processes.
exec torchrun \
    --nnodes "$NNODES" \
    --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" \
    --master-port "$MASTER_PORT" \
    --nproc-per-node 8 \
    -m megatron_spark.cli train "$CONFIG" "${overrides[@]}" "$@"

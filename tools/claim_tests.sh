#!/usr/bin/env bash
# SPARK's claim on the README's main job (tests/claims/test_demo_claim.py): the full demo at seed
# 0, then its judge and test-time results against the demo's bars. About 10 minutes on 2 cores,
# beyond the test command's budget, so CI runs it after the test command, in the same environment.
#
#   bash tools/claim_tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MEGATRON_SPARK_CLAIM_TESTS=1 python -m pytest -q tests/claims

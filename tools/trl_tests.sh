#!/usr/bin/env bash
# The cross-checks against TRL (tests/unit/test_trl_parity.py: our fused loss head's clipped
# surrogate, k3 KL, dual clip, entropy bonus and every aggregation TRL offers, loss and every
# parameter gradient against a real GRPOTrainer). TRL is not a dependency of megatron_spark, so it
# gets a virtual environment of its own; CI runs this after the main suite.
#
#   bash tools/trl_tests.sh            # venv in .venv-trl (git-ignored); TRL_VENV=DIR elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRL_VENV:-.venv-trl}"
TRL_VERSION=1.16.0
# The exact versions this environment last passed with (tools/refresh_constraints.sh rewrites
# them; TRL_CONSTRAINTS=none resolves afresh).
CONSTRAINTS="${TRL_CONSTRAINTS:-tools/trl-constraints.txt}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
[ -x "$VENV/bin/python" ] || python -m venv "$VENV"
if [ "$CONSTRAINTS" = none ]; then constrain=(); else constrain=(-c "$CONSTRAINTS"); fi
"$VENV/bin/pip" install -q "${constrain[@]}" "trl==$TRL_VERSION" torch==2.13.0 -e . pytest
"$VENV/bin/python" -m pytest -q -o addopts="" tests/unit/test_trl_parity.py

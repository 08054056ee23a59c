#!/usr/bin/env bash
# Re-resolve the tested dependency set: install the newest versions setup.py's ranges allow into
# fresh virtual environments, run the test command (and the vLLM tests), and only if both pass
# write the exact versions to constraints.txt (main environment), tools/vllm-constraints.txt
# (the vLLM test environment) and tools/trl-constraints.txt (the TRL cross-check environment). CI and the README's commands install with those files, so a
# dependency release cannot change what CI tests until someone runs this and commits the result.
#
#   bash tools/refresh_constraints.sh          # about 25 minutes on 2 cores, most of it the tests
#
# torch is left out of both files: the install commands pin it themselves (torch==2.13.0, the
# CPU build on these machines), and a local build tag (+cpu) must not be forced on other machines.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

freeze() {  # the exact versions of a venv, without torch and without this package
    echo "# The exact versions the tests passed with on $(date +%Y-%m-%d) (Python $("$1/bin/python" -c 'import sys; print(sys.version.split()[0])'))."
    echo "# Written by tools/refresh_constraints.sh; do not edit by hand."
    "$1/bin/pip" freeze --exclude-editable | grep -v -i -E '^(torch|megatron[-_]spark)==' | LC_ALL=C sort -f
}

python -m venv "$work/main"
"$work/main/bin/pip" install -q torch==2.13.0 -e ".[test]"
"$work/main/bin/python" -m pytest -q tests
freeze "$work/main" > "$work/constraints.txt"

VLLM_VENV="$work/vllm" VLLM_CONSTRAINTS=none bash tools/vllm_tests.sh
freeze "$work/vllm" > "$work/vllm-constraints.txt"

TRL_VENV="$work/trl" TRL_CONSTRAINTS=none bash tools/trl_tests.sh
freeze "$work/trl" > "$work/trl-constraints.txt"

mv "$work/constraints.txt" constraints.txt
mv "$work/vllm-constraints.txt" tools/vllm-constraints.txt
mv "$work/trl-constraints.txt" tools/trl-constraints.txt
echo "wrote constraints.txt, tools/vllm-constraints.txt and tools/trl-constraints.txt; commit them with the date in the message"

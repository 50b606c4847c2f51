#!/usr/bin/env bash
# The whole test suite (`make test`, what CI runs), with the vLLM engine's environment built
# while the rest runs:
#   1. scripts/setup_vllm.sh starts in the background (a download-bound pip install, minutes on
#      a fresh machine; a no-op once built), its output in .cache/logs/setup-vllm.log;
#   2. .venv is set up, ruff checks the tree, and every test not marked `vllm_env` runs;
#   3. once the engine environment is ready, the `vllm_env` tests run, with MMMO_REQUIRE_VLLM=1
#      (a missing engine environment is then a failure, not a skip).
# The exit code is the first failure's. Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/logs
vlog=.cache/logs/setup-vllm.log
bash scripts/setup_vllm.sh >"$vlog" 2>&1 &
vpid=$!
trap 'kill "$vpid" 2>/dev/null' EXIT

status=0
failed() { [[ $status -ne 0 ]] || status=$1; }
bash scripts/setup.sh || exit $?
.venv/bin/python -m ruff check . || failed $?
.venv/bin/python -m pytest -q -m "not vllm_env" "$@" || failed $?

if ! wait "$vpid"; then
  echo "the vLLM engine environment could not be set up (scripts/setup_vllm.sh):" >&2
  tail -20 "$vlog" >&2
  exit 1
fi
trap - EXIT
MMMO_REQUIRE_VLLM=1 .venv/bin/python -m pytest -q -m vllm_env "$@" || failed $?
exit "$status"

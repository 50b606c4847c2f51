#!/usr/bin/env bash
# Every GPU figure the project owes, in ONE run on a lent GPU machine (<= 8 minutes):
#
#   1. in-memory merge vs mergekit run_merge + reload at >= 1B parameters (ratio; source bytes
#      read per second against the card's memory bandwidth): benchmarks/merge_speed.py;
#   2. HF evaluation seconds per trial at the same size, with peak host and device memory per
#      trial: benchmarks/eval_speed.py --backends hf;
#   3. the vLLM backend on the GPU: only where vLLM is importable there. It is not on the lent
#      machines (no network, and vLLM's CUDA wheel is far over the 64 MiB that may travel), so
#      this figure stays OWED until a machine with vLLM is available; the script says so.
#
# That machine has torch/transformers/accelerate/botorch (Python 3.12) but no mergekit, lm-eval,
# datasets or pydantic and no network: they travel as wheels in .whl/ (ignored by git; pass it
# as `carry`). Prepare them HERE, once, with network:
#
#     bash benchmarks/device_check.sh prepare        # ~13 MB of wheels into .whl/
#
# Then on the device (the run tool, from the repo root):
#
#     bash benchmarks/device_check.sh                 # carry: [".whl"]; timeout_s: 540
#
# Every step is time-limited and fails soft: a failing step prints why and the next one runs.
# Logs go to $OUT (the run tool's folder) or /tmp/mmmo-device-check. Knobs (environment):
# DC_DEVICE (cuda), DC_DTYPE (bfloat16), DC_HIDDEN/DC_LAYERS/DC_INTER/DC_VOCAB (2048/18/5632/
# 32000: ~1.06B parameters per model), DC_TRIALS (3), DC_BUDGET (seconds, 470), PYTHON (python3).
# On CPU, a small dry run of the whole script:
#     DC_DEVICE=cpu DC_DTYPE=float32 DC_HIDDEN=128 DC_LAYERS=2 DC_INTER=256 DC_VOCAB=512 \
#         PYTHON=.venv/bin/python bash benchmarks/device_check.sh
set -u
cd "$(dirname "$0")/.."

WHEELS=(mergekit==0.1.5 lm_eval==0.4.13 immutables==0.21 datasets==5.2.0 dill==0.4.1
        multiprocess==0.70.19 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5)

if [[ "${1:-}" == "prepare" ]]; then
  mkdir -p .whl
  plats=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64; do plats+=(--platform "$p"); done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${DC_PYVER:-3.12}" \
    --implementation cp "${plats[@]}" -d .whl "${WHEELS[@]}" 2>&1 | grep -v '^WARNING: Location'
  echo "prepared: $(ls .whl/*.whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (carry it)"
  exit 0
fi

START=$(date +%s)
BUDGET=${DC_BUDGET:-470}
PY=${PYTHON:-python3}
DEVICE=${DC_DEVICE:-cuda}
DTYPE=${DC_DTYPE:-bfloat16}
SIZE=(--hidden-size "${DC_HIDDEN:-2048}" --layers "${DC_LAYERS:-18}"
      --intermediate-size "${DC_INTER:-5632}" --vocab-size "${DC_VOCAB:-32000}")
TRIALS=${DC_TRIALS:-3}
LOGS=${OUT:-/tmp/mmmo-device-check}
WORK=$(mktemp -d /tmp/mmmo-device-check-XXXX)
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 MMMO_CACHE_DIR="$WORK/cache" HF_HOME="$WORK/hf"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY=()

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME SECONDS CMD...: run CMD with a time limit (never more than what is left), log it,
# keep going whatever happens
step() {
  local name=$1 limit=$2; shift 2
  local remaining; remaining=$(left)
  if (( remaining < 30 )); then
    echo "=== $name: SKIPPED (only ${remaining} s of the ${BUDGET} s budget left)"
    SUMMARY+=("$name: skipped (time budget)"); return 1
  fi
  (( limit > remaining )) && limit=$remaining
  echo "=== $name (limit ${limit} s, $(date +%T))"
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    SUMMARY+=("$name: ok (${took} s)")
  elif (( rc == 124 || rc == 137 )); then
    echo "=== $name: TIMED OUT after ${limit} s"; SUMMARY+=("$name: timed out (${limit} s)")
  else
    echo "=== $name: FAILED (exit $rc): $(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 1)"
    SUMMARY+=("$name: failed (exit $rc)")
  fi
  return "$rc"
}

echo "=== environment"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader \
    || echo "nvidia-smi failed"
else
  echo "no nvidia-smi: no GPU here (device $DEVICE)"
fi
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
"| cuda", torch.version.cuda, "| GPU visible:", torch.cuda.is_available())' \
  || { echo "error: $PY cannot import torch; nothing to measure"; exit 1; }
free -g 2>/dev/null | head -2
df -h /dev/shm /tmp 2>/dev/null | tail -n 2
if [[ "$DEVICE" == cuda* ]] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "error: DC_DEVICE=$DEVICE but torch sees no GPU; set DC_DEVICE=cpu for a dry run"; exit 1
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  if step wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
       --upgrade --target "$WORK/site" .whl/*.whl; then
    export PYTHONPATH="$PYTHONPATH:$WORK/site"  # only packages the image lacks are there
  else
    echo "(the carried wheels did not install: using whatever $PY already has)"
  fi
else
  echo "=== wheels: none carried (.whl/ is empty: run 'bash benchmarks/device_check.sh prepare' here"
  echo "    and carry .whl); using whatever $PY already has"
fi
for mod in mergekit lm_eval datasets pydantic mmmo.merging.materialize mmmo.evaluation.benchmark; do
  if ! err=$("$PY" -c "import $mod" 2>&1); then
    echo "missing: import $mod fails: $(echo "$err" | tail -n 1)"
  fi
done

step merge_speed 200 "$PY" benchmarks/merge_speed.py "${SIZE[@]}" --dtype "$DTYPE" \
  --device "$DEVICE" --trials "$TRIALS" --workdir "$WORK/bench" --keep
step eval_speed_hf 200 "$PY" benchmarks/eval_speed.py --backends hf "${SIZE[@]}" \
  --dtype "$DTYPE" --device "$DEVICE" --trials "$TRIALS" --limit 100 --gen-limit 20 \
  --max-gen-toks 16 --batch-size 32 --workdir "$WORK/bench" --json "$LOGS/eval_speed_hf.json"
if "$PY" -c 'import vllm' >/dev/null 2>&1; then
  # a vLLM engine environment on this machine: the backend uses it through $MMMO_VLLM_PYTHON
  export MMMO_VLLM_PYTHON; MMMO_VLLM_PYTHON=$(command -v "$PY")
  step eval_speed_vllm 200 "$PY" benchmarks/eval_speed.py \
    --backends hf,vllm "${SIZE[@]}" --dtype "$DTYPE" --device "$DEVICE" --trials "$TRIALS" \
    --limit 100 --gen-limit 20 --max-gen-toks 16 --workdir "$WORK/bench"
else
  echo "=== eval_speed_vllm: OWED: vLLM is not installed here (its CUDA wheel is too large to"
  echo "    carry, and this machine has no network); the vLLM GPU figure needs a machine with vLLM"
  SUMMARY+=("eval_speed_vllm: owed (no vLLM on this machine)")
fi

echo
echo "=== summary ($(( $(date +%s) - START )) s; logs in $LOGS)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
grep -hE "^(median|params/model|GPU |goal|weights of)" "$LOGS/merge_speed.log" 2>/dev/null | sed 's/^/  merge: /'
grep -hE "^\[hf\] trial|^\| hf" "$LOGS/eval_speed_hf.log" 2>/dev/null | sed 's/^/  eval: /'
rm -rf "$WORK"

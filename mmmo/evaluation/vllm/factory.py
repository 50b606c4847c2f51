"""A :class:`VLLMBackend` for one device slot of a search spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmmo.evaluation.vllm.backend import VLLMBackend
from mmmo.evaluation.vllm.engine import AttachedEngine, Engine, EngineSettings, cuda_devices
from mmmo.evaluation.vllm.env import INSTALL_HINT, launcher_for, probe

__all__ = ["engine_for", "vllm_backend"]


def engine_for(spec: Any, *, slot_index: int, device: str, log_dir: Path,
               base_dir: str) -> Engine | AttachedEngine:
    """The (not yet started) engine of slot ``slot_index``: attached by URL or to be started."""
    compute, vspec = spec.compute, spec.compute.engine
    name = f"vllm engine (slot {slot_index})"
    if vspec.urls:
        return AttachedEngine(vspec.urls[slot_index], health_timeout=vspec.health_timeout_seconds,
                              startup_timeout=vspec.startup_timeout_seconds, name=name)
    launcher, where = launcher_for(vspec)
    if launcher is None:
        from mmmo.evaluation.vllm.engine import EngineError

        raise EngineError(f"no vLLM environment ({where}): {INSTALL_HINT}")
    flavor = probe(launcher).flavor or "cpu"
    settings = EngineSettings(
        launcher=launcher, model=str(base_dir), served_name="mmmo-base",
        dtype=vspec.dtype or compute.dtype, flavor=flavor,
        devices=cuda_devices(device, vspec.tensor_parallel_size) if flavor == "gpu" else (),
        seed=0, max_model_len=vspec.max_model_len,
        gpu_memory_utilization=vspec.gpu_memory_utilization,
        tensor_parallel_size=vspec.tensor_parallel_size,
        cpu_kvcache_space_gib=vspec.cpu_kvcache_space_gib,
        extra_args=tuple(vspec.extra_args), trust_remote_code=compute.trust_remote_code,
        startup_timeout=vspec.startup_timeout_seconds,
        health_timeout=vspec.health_timeout_seconds)
    return Engine(settings, log=Path(log_dir) / f"vllm-slot{slot_index}.log", name=name)


def vllm_backend(spec: Any, *, slot_index: int, device: str, log_dir: Path) -> VLLMBackend:
    """Build slot ``slot_index``'s backend: a model-less Materializer (sources resident in host
    memory, merge math on ``device``) and its engine, started (or attached) and answering.

    Args:
        spec: The :class:`~mmmo.spec.SearchSpec` (``compute.backend: vllm``).
        slot_index: Which slot (picks ``compute.vllm.url[slot_index]`` when attached).
        device: The slot's math device (``cpu``, ``cuda``, ``cuda:<k>``; ``auto`` follows the
            engine's build). On CUDA the engine gets cards k .. k+tp-1.
        log_dir: The run's log folder (the engine logs to ``vllm-slot<i>.log`` there).
    """
    from mmmo.merging.materialize import Materializer

    vspec = spec.compute.engine
    if device == "auto":
        launcher, _ = launcher_for(vspec)
        gpu = (not vspec.urls and launcher is not None and probe(launcher).flavor == "gpu")
        if vspec.urls:
            import torch

            gpu = torch.cuda.is_available()
        device = "cuda" if gpu else "cpu"
    # sources in host memory (pinned on CUDA): the card is the engine's, and the merge math's
    # per-tensor workspace
    mat = Materializer.from_spec(spec, device=device, resident="cpu", skeleton=False)
    try:
        engine = engine_for(spec, slot_index=slot_index, device=device, log_dir=log_dir,
                            base_dir=str(mat.base_dir))
        return VLLMBackend(mat, engine, num_concurrent=vspec.num_concurrent,
                           request_timeout=vspec.request_timeout_seconds,
                           shm_dir=vspec.shm_dir)
    except BaseException:
        mat.close()
        raise

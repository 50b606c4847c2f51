"""Where and how trials run: devices, runners, backends (vLLM), evaluation retries."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from mmmo.spec.base import _DEVICE, FieldProblem, _Frozen


class VLLMSpec(_Frozen):
    """How the ``vllm`` evaluation backend gets its engine (one per device slot).

    Either mm-mo starts one engine per slot from the base model, with ``python`` (or
    ``command``) of the engine's own environment (default: the project's ``.venv-vllm``, made
    by ``make setup-vllm``), or it attaches to engines the user already runs (``url``). Checked
    before any work by :func:`mmmo.evaluation.vllm.preflight`.
    """

    python: str | None = None
    """The engine environment's interpreter (default: ``$MMMO_VLLM_PYTHON``, else the
    project's ``.venv-vllm/bin/python``)."""
    command: list[str] | None = None
    """Instead of ``python``: a launcher that runs that interpreter, e.g.
    ``[conda, run, -n, vllm, python]``; ``-m vllm.entrypoints.openai.api_server ...`` follows."""
    url: str | list[str] | None = None
    """An engine already running on this machine (one per slot), e.g.
    ``http://127.0.0.1:8000``, started on the base with ``VLLM_SERVER_DEV_MODE=1``."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """The engine's dtype (default: ``compute.dtype``)."""
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.6, gt=0, le=1)
    """Share of the card the engine takes; the rest holds the per-tensor merge math."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    cpu_kvcache_space_gib: float = Field(default=1.0, gt=0)
    """KV cache of an engine on CPU (``VLLM_CPU_KVCACHE_SPACE``)."""
    num_concurrent: int = Field(default=8, ge=1)
    """Requests one benchmark keeps in flight (the engine batches them)."""
    startup_timeout_seconds: float = Field(default=600.0, gt=0)
    health_timeout_seconds: float = Field(default=10.0, gt=0)
    request_timeout_seconds: float = Field(default=600.0, gt=0)
    shm_dir: str = "/dev/shm"
    """Shared memory where each trial's merged weights pass to the engine (then removed)."""
    extra_args: list[str] = Field(default_factory=list)
    """More engine arguments, passed as they are (e.g. ``[--max-num-seqs, "64"]``)."""

    @model_validator(mode="after")
    def _check_route(self) -> VLLMSpec:
        if self.python is not None and self.command is not None:
            raise FieldProblem("python and command are both set", "keep one of them",
                               field="command", value=self.command, has_value=True)
        if self.command is not None and not self.command:
            raise FieldProblem("is empty", "give the launcher's words, e.g. [conda, run, "
                               "-n, vllm, python], or remove it", field="command",
                               value=self.command, has_value=True)
        if self.url is not None:
            starts = {k: getattr(self, k) for k in ("python", "command", "max_model_len",
                                                   "dtype", "extra_args")
                      if getattr(self, k)}
            if starts:
                key = next(iter(starts))
                raise FieldProblem("starts an engine, but url attaches to a running one",
                                   f"remove {key} (start your engine with those "
                                   "arguments) or remove url", field=key,
                                   value=starts[key], has_value=True)
            urls = [self.url] if isinstance(self.url, str) else self.url
            if not urls:
                raise FieldProblem("is an empty list", "give one URL per device slot",
                                   field="url", value=self.url, has_value=True)
            for u in urls:
                if not re.match(r"^https?://[^/\s]+", u):
                    raise FieldProblem("is not an http(s) URL", "write it like "
                                       "http://127.0.0.1:8000", field="url", value=u,
                                       has_value=True)
        return self

    @property
    def urls(self) -> list[str]:
        """``url`` as a list (empty when mm-mo starts the engines)."""
        if self.url is None:
            return []
        return [self.url] if isinstance(self.url, str) else list(self.url)


class ComputeSpec(_Frozen):
    """Where trials run: device, precision, evaluation batch size, concurrency."""

    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int | Literal["auto"] = 32
    max_concurrent_trials: int = Field(default=1, ge=1)
    """Device slots: trials evaluated at the same time (threads in this process, or Dask
    workers with ``runner: dask``)."""
    runner: Literal["threads", "dask"] = "threads"
    """Where trials run: ``threads`` of this process (one slot per device), or the workers of a
    Dask cluster (one slot per worker, each holding its resident models)."""
    runner_address: str | None = None
    """``runner: dask``: the scheduler to attach to (``tcp://host:8786``); unset, a local cluster
    of ``max_concurrent_trials`` worker processes is started for the run."""
    trust_remote_code: bool = False
    """Let transformers run Python code shipped with the models; off unless a spec sets it."""
    backend: Literal["hf", "vllm"] = "hf"
    """Evaluation backend: ``hf`` (in-process transformers) or ``vllm`` (an engine per slot)."""
    vllm: VLLMSpec | None = None
    """The ``vllm`` backend's engine settings (defaults when omitted)."""

    @model_validator(mode="after")
    def _check_backend(self) -> ComputeSpec:
        if self.vllm is not None and self.backend != "vllm":
            raise FieldProblem("is set but compute.backend is hf", "set compute.backend: "
                               "vllm, or remove compute.vllm", field="vllm",
                               has_value=False)
        urls = self.vllm.urls if self.vllm is not None else []
        if urls and len(urls) < self.max_concurrent_trials:
            raise FieldProblem(f"gives {len(urls)} engine(s) for {self.max_concurrent_trials}"
                               " concurrent trials (one engine serves one trial at a time)",
                               "give one URL per slot, or lower compute.max_concurrent_trials",
                               field="vllm.url", value=self.vllm.url, has_value=True)
        return self

    @property
    def engine(self) -> VLLMSpec:
        """The vLLM settings in force (``vllm`` or the defaults)."""
        return self.vllm if self.vllm is not None else VLLMSpec()

    @field_validator("runner", mode="before")
    @classmethod
    def _check_runner(cls, runner: Any) -> Any:
        if runner == "ray":
            raise FieldProblem("Ray is not supported", "use runner: dask (a Dask cluster: "
                               "`pip install -e .[dask]`, see the README's two-machine recipe)",
                               value=runner, has_value=True)
        return runner

    @model_validator(mode="after")
    def _check_address(self) -> ComputeSpec:
        if self.runner_address is not None and self.runner != "dask":
            raise FieldProblem("is only used with runner: dask", "set runner: dask, or remove "
                               "runner_address", field="runner_address",
                               value=self.runner_address, has_value=True)
        return self

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise FieldProblem("is not a device", "use auto, cpu, cuda, cuda:<index> or mps",
                               value=device, has_value=True)
        return device

    @field_validator("batch_size", mode="before")
    @classmethod
    def _check_batch(cls, size: Any) -> Any:
        if isinstance(size, str) and size != "auto" or isinstance(size, bool):
            raise FieldProblem("is neither a number nor 'auto'", "use a positive batch "
                               "size or 'auto'", value=size, has_value=True)
        if isinstance(size, int) and size < 1:
            raise FieldProblem("must be >= 1", "use a positive batch size or 'auto'",
                               value=size, has_value=True)
        return size


class EvaluationSpec(_Frozen):
    """Retries and time limits of one benchmark evaluation."""

    retries: int = Field(default=2, ge=0, le=20)
    retry_delay_seconds: float | list[float] = Field(default_factory=lambda: [2.0, 10.0])
    timeout_seconds: float | None = Field(default=None, gt=0)

    @field_validator("retry_delay_seconds")
    @classmethod
    def _check_delays(cls, delays: float | list[float]) -> float | list[float]:
        values = delays if isinstance(delays, list) else [delays]
        if not values or any(not math.isfinite(d) or d < 0 for d in values):
            raise FieldProblem("must be seconds >= 0 (a number or a non-empty list)",
                               "write e.g. 10 or [10, 60]", value=delays, has_value=True)
        return delays

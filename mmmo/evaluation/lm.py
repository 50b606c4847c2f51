"""lm-eval's HFLM over a resident (in-memory) model: built once, re-used across trials, timed.

:func:`get_lm` keeps one HFLM per (model object, tokenizer, batch size, device). HFLM keeps no results
between calls (no request cache: lm-eval's ``use_cache``/``cache_requests`` are never enabled
here; its ``logits_cache`` only shares logits *within* one batch), so after the resident model's
weights change in place the next evaluation scores the new weights. The cache holds the model
alive until :func:`release_lm` / :func:`clear_lm_cache` or until it is evicted (it keeps the
:data:`MAX_CACHED` most recently used wrappers).

Timing and cancellation work through two forward hooks installed once per model. They act only
inside :func:`measuring` on the calling thread, so several threads can evaluate one model at once
and each gets its own numbers:

- ``forward_seconds``: time inside the model's forward calls (on CUDA, synchronised at the end of
  each forward so the time is the device's, not the launch's);
- cancellation: once an evaluation's cancel event is set, its thread's next forward raises
  :class:`EvaluationCancelled` (used by timeouts; every generated token is a forward, so a long
  generation stops within one token).

``request_seconds`` is the time inside HFLM's request methods (tokenising, batching, forwards).

Threads: HF tokenizers are not thread-safe (lm-eval flips ``padding_side`` and the Rust
tokenizer's padding state per call), so request methods of every HFLM that shares a tokenizer
run one at a time. Benchmarks in parallel threads overlap everything else (task loading,
request building, metrics); time spent waiting for the lock counts toward a time limit but not
toward ``request_seconds``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmmo.hooks import crash_point

if TYPE_CHECKING:
    import torch
    from lm_eval.models.huggingface import HFLM

__all__ = [
    "MAX_CACHED",
    "EvaluationCancelled",
    "Timing",
    "check_device",
    "clear_lm_cache",
    "get_lm",
    "measuring",
    "release_lm",
]

MAX_CACHED = 4
"""HFLM wrappers kept by :func:`get_lm` (least recently used are dropped first)."""


class EvaluationCancelled(Exception):  # noqa: N818 (a signal, not an error)
    """Raised inside a forward pass of an evaluation whose cancel event is set."""


@dataclass
class Timing:
    """Seconds one evaluation spent in the LM's request methods and in model forwards."""

    request_seconds: float = 0.0
    forward_seconds: float = 0.0
    forwards: int = 0


_local = threading.local()


@contextmanager
def measuring(cancel: threading.Event | None = None, *,
              inject_oom: bool = False) -> Iterator[Timing]:
    """Time (and make cancellable) the evaluations this thread runs inside the block.

    Args:
        cancel: When set, this thread's next model forward raises :class:`EvaluationCancelled`.
        inject_oom: The first model forward in the block raises ``torch.OutOfMemoryError``
            (fault injection, :mod:`mmmo.hooks`).

    Yields:
        The :class:`Timing` that accumulates while the block runs.
    """
    timing = Timing()
    previous = getattr(_local, "state", None)
    _local.state = (timing, cancel, {"oom": inject_oom})
    try:
        yield timing
    finally:
        _local.state = previous


def _current() -> tuple[Timing, threading.Event | None, dict[str, bool]] | None:
    return getattr(_local, "state", None)


def _pre_hook(module: torch.nn.Module, args: Any) -> None:
    state = _current()
    if state is None:
        return
    if state[1] is not None and state[1].is_set():
        raise EvaluationCancelled("evaluation cancelled (time limit reached)")
    crash_point("benchmark:forward")
    if state[2]["oom"]:
        import torch

        state[2]["oom"] = False
        raise torch.OutOfMemoryError("CUDA out of memory (injected by MMMO_FAULTS)")
    _local.t0 = time.perf_counter()


def _post_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
    state = _current()
    t0 = getattr(_local, "t0", None)
    if state is None or t0 is None:
        return
    device = getattr(module, "device", None)
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    state[0].forward_seconds += time.perf_counter() - t0
    state[0].forwards += 1
    _local.t0 = None


_hooked: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()
_hook_lock = threading.Lock()


def _install_hooks(model: torch.nn.Module) -> None:
    """Install the timing/cancel hooks on ``model`` once (they are inert outside measuring)."""
    with _hook_lock:
        if model not in _hooked:
            _hooked[model] = (model.register_forward_pre_hook(_pre_hook),
                              model.register_forward_hook(_post_hook))


def _remove_hooks(model: torch.nn.Module) -> None:
    with _hook_lock:
        handles = _hooked.pop(model, None)
    for handle in handles or ():
        handle.remove()


class TimedRequests:
    """Mixin of an lm-eval ``LM`` (first base): its request methods add their time to the
    calling thread's :class:`Timing` (inside :func:`measuring`), under :meth:`request_lock`."""

    def request_lock(self) -> Any:
        """What a request holds while it runs (nothing by default)."""
        return contextlib.nullcontext()

    def _timed(self, method: str, requests: Any, **kwargs: Any) -> Any:
        if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
            kwargs.setdefault("disable_tqdm", True)  # lm-eval passes disable= explicitly
        with self.request_lock():
            start = time.perf_counter()
            try:
                return getattr(super(), method)(requests, **kwargs)
            finally:
                state = _current()
                if state is not None:
                    state[0].request_seconds += time.perf_counter() - start

    def loglikelihood(self, requests: Any, **kwargs: Any) -> Any:
        """lm-eval's, timed."""
        return self._timed("loglikelihood", requests, **kwargs)

    def loglikelihood_rolling(self, requests: Any, **kwargs: Any) -> Any:
        """lm-eval's, timed."""
        return self._timed("loglikelihood_rolling", requests, **kwargs)

    def generate_until(self, requests: Any, **kwargs: Any) -> Any:
        """lm-eval's, timed."""
        return self._timed("generate_until", requests, **kwargs)


def _timed_hflm_class() -> type[HFLM]:
    from lm_eval.models.huggingface import HFLM

    class TimedHFLM(TimedRequests, HFLM):
        """HFLM whose request methods are timed and run one at a time per tokenizer."""

        def request_lock(self) -> Any:
            return _tokenizer_lock(self.tokenizer)

    return TimedHFLM


_tokenizer_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()


def _tokenizer_lock(tokenizer: Any) -> threading.Lock:
    """The lock that serialises requests using ``tokenizer`` (created on first use)."""
    with _hook_lock:
        lock = _tokenizer_locks.get(tokenizer)
        if lock is None:
            lock = _tokenizer_locks[tokenizer] = threading.Lock()
        return lock


_cache: OrderedDict[tuple[int, int, str, str], HFLM] = OrderedDict()
_cache_lock = threading.Lock()
_timed_cls: type[HFLM] | None = None


def get_lm(model: Any, tokenizer: Any, *, batch_size: int | str = 32,
           device: str | None = None) -> Any:
    """The HFLM wrapping ``model`` (built on first use, then re-used across trials).

    Args:
        model: A transformers causal LM, already on its device (HFLM evaluates a model object
            where it lives), or any lm-eval ``LM`` (an HFLM, the vLLM backend's completions
            model: returned as is).
        tokenizer: Its tokenizer.
        batch_size: Evaluation batch size, or ``"auto"`` (HFLM finds one by halving on OOM).
        device: Expected device (``cpu``, ``cuda``, ``cuda:1``, ``mps``); None or ``auto``
            accepts wherever the model lives.

    Raises:
        ValueError: ``device`` names a different device than the model's.
    """
    global _timed_cls
    from lm_eval.api.model import LM

    if isinstance(model, LM):  # an HFLM, or another backend's LM (e.g. vLLM's completions)
        return model
    check_device(model, device)
    # the device is part of the key: HFLM reads it once, and a resident model may be moved
    key = (id(model), id(tokenizer), str(batch_size), str(getattr(model, "device", "")))
    with _cache_lock:
        lm = _cache.get(key)
        if lm is not None and lm.model is model:
            _cache.move_to_end(key)
            return lm
        if _timed_cls is None:
            _timed_cls = _timed_hflm_class()
        lm = _timed_cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        _install_hooks(model)
        _cache[key] = lm
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
        return lm


def release_lm(model: Any) -> None:
    """Forget every HFLM wrapping ``model`` and remove its hooks (e.g. before freeing it)."""
    with _cache_lock:
        for key in [k for k, lm in _cache.items() if lm.model is model]:
            del _cache[key]
    _remove_hooks(model)


def clear_lm_cache() -> None:
    """Forget every cached HFLM and remove every hook installed by :func:`get_lm`."""
    with _cache_lock:
        models = [lm.model for lm in _cache.values()]
        _cache.clear()
    for model in models:
        _remove_hooks(model)


def check_device(model: Any, device: str | None) -> None:
    """Raise ValueError when ``device`` (None/``auto``: any) is not where ``model`` lives."""
    if device in (None, "auto"):
        return
    import torch

    want, have = torch.device(device), getattr(model, "device", None)
    if have is None:
        return
    if want.type != have.type or (want.index is not None and want.index != have.index):
        raise ValueError(f"the model is on {have}, not on {device}: place it before evaluating "
                         "(a model object is evaluated where it lives)")

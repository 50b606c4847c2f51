"""One benchmark (one task on one live model): the unit of work, with its own cache key.

:func:`evaluate_benchmark` runs lm-eval on the resident model through a cached HFLM
(:mod:`mmmo.evaluation.lm`) on the task's fixed, seeded subsample (:func:`select_docs`). It
calls :func:`lm_eval.evaluator.evaluate` -- the core of ``simple_evaluate`` -- after applying the
same task settings ``simple_evaluate`` applies (``gen_kwargs``, ``num_fewshot``, few-shot seed,
global seeds), because ``simple_evaluate`` also gathers environment metadata on every call
(``pip list``, ``git``: about 2 s of subprocesses per call, more than a fixture benchmark
takes). Scores equal ``lm_eval --model hf`` on the exported model (tested).

Failures are data: an exception, a time-out, a non-finite score or an out-of-memory error
becomes an :class:`EvalFailure`; nothing but a caller's mistake (an unknown task, a model on the
wrong device) raises.

Time limit: the evaluation runs in a worker thread; when ``timeout_s`` passes, its cancel event
is set and the worker's next model forward raises (a forward is at most one batch, or one
generated token), then the worker is given :data:`CANCEL_GRACE_S` to unwind. Python cannot
interrupt a thread elsewhere: a worker stuck outside the model (dataset loading, a metric) keeps
running in the background after the failure is returned, though it can no longer run the model.
A hard limit on such code needs a subprocess (kill -9), which would reload the model per
benchmark and lose the point of a resident model; not done here.

Out of memory: ``torch.OutOfMemoryError`` (or a RuntimeError saying "out of memory") frees the
device cache and retries once at half the batch size; if that fails too, the failure has kind
``oom`` and the batch size that failed.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from mmmo import hooks
from mmmo.evaluation.lm import EvaluationCancelled, check_device, get_lm, measuring
from mmmo.evaluation.records import BenchmarkResult, EvalFailure
from mmmo.evaluation.results import result_of
from mmmo.evaluation.tasks import (
    DocRange,
    LoadedTask,
    TaskRegistry,
    default_registry,
    task_fingerprint,
)
from mmmo.spec import TaskSpec

__all__ = ["CANCEL_GRACE_S", "EVAL_VERSION", "benchmark_key", "evaluate_benchmark"]

EVAL_VERSION = "2"
"""Bumped whenever a change here could change a score: part of every benchmark key."""

CANCEL_GRACE_S = 30.0
"""Seconds a timed-out evaluation is given to stop at its next forward pass."""

DEFAULT_BOOTSTRAP_ITERS = 1000
"""Bootstrap draws for metrics without a closed-form standard error (mean/acc need none)."""

_SEEDS = {"random": 0, "numpy": 1234, "torch": 1234}
"""The global seeds ``simple_evaluate`` sets (lm-eval's defaults)."""


def benchmark_key(recipe_id: str, task: TaskSpec, *,
                  model_fingerprints: Sequence[str] | str = (), docs: DocRange | None = None,
                  backend: str = "hf") -> str:
    """A stable hex key of one benchmark: what must match for a stored result to be re-used.

    It covers the recipe id, the task reference and its content hash (YAML, includes, data
    files; lm-eval's version for built-in tasks), label, metric, filter, the documents (the
    slice ``docs`` of the seeded ranking, default the task's ``limit``), sample seed, few-shot
    count, chat template, generation kwargs, the model fingerprints (e.g. the base and source
    revisions), the evaluation backend and :data:`EVAL_VERSION`. Batch size and direction are
    left out: they do not change a score.

    Args:
        recipe_id: The recipe's identity (or a model's name for held-out rows).
        task: The task and its evaluation settings.
        model_fingerprints: Revisions/hashes of the models the recipe merges.
        docs: The documents scored (default ``DocRange(stop=task.limit)``).
        backend: ``hf`` or ``vllm`` (a kernel difference may flip a near-tie).
    """
    fingerprints = [model_fingerprints] if isinstance(model_fingerprints, str) \
        else list(model_fingerprints)
    payload = {
        "eval_version": EVAL_VERSION,
        "recipe": recipe_id,
        "task": task.task,
        "content": task_fingerprint(task.task),
        "label": task.label,
        "metric": task.metric,
        "filter": task.filter,
        "docs": (docs or DocRange(stop=task.limit)).key(),
        "sample_seed": task.sample_seed,
        "num_fewshot": task.num_fewshot,
        "apply_chat_template": task.apply_chat_template,
        "gen_kwargs": task.gen_kwargs,
        "models": fingerprints,
        "backend": backend,
    }
    faults = hooks.faults_setting()
    if faults:  # injected outcomes never share a key with real ones
        payload["faults"] = faults
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def evaluate_benchmark(model: Any, tokenizer: Any, task: TaskSpec, *,
                       docs: DocRange | None = None, batch_size: int | str = 32,
                       device: str | None = None, timeout_s: float | None = None,
                       registry: TaskRegistry | None = None,
                       bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
                       oom_retry: bool = True,
                       log_samples: bool = False) -> BenchmarkResult | EvalFailure:
    """Score one task on a live model; never raises for evaluation errors.

    Args:
        model: The resident transformers model (evaluated where it lives), or any lm-eval
            ``LM`` (an HFLM, a completions client of a vLLM engine, ...).
        tokenizer: Its tokenizer (unused for an ``LM``).
        task: Task, metric/filter, subsample and generation settings.
        docs: Which documents of the task's seeded ranking to score (default: the task's
            ``limit``, i.e. ``DocRange(stop=task.limit)``).
        batch_size: Batch size unless ``task.batch_size`` overrides it; ``"auto"`` lets HFLM
            search one.
        device: Expected device of the model (None/``auto``: wherever it is).
        timeout_s: Wall-clock limit for the benchmark (both attempts together); None = none.
        registry: Task registry (default: the process-wide one).
        bootstrap_iters: Bootstrap draws for metrics without a closed-form stderr.
        oom_retry: On out-of-memory, retry once at half the batch size (not for an HFLM given
            as ``model``: its batch size is its own).
        log_samples: Keep each document's filtered response, target and metrics in
            ``raw["samples"][<leaf task>]`` (for inspection; off in searches).

    Returns:
        A :class:`BenchmarkResult`, or an :class:`EvalFailure` of kind ``exception``,
        ``timeout``, ``nan`` or ``oom``.

    Raises:
        SpecError: ``task.task`` names no known task (:func:`validate_tasks` catches it first).
        ValueError: ``device`` is not where the model lives.
    """
    from lm_eval.api.model import LM

    registry = registry or default_registry()
    registry.resolve(task.task)
    is_lm = isinstance(model, LM)
    if not is_lm:
        check_device(model, device)
    docs = docs or DocRange(stop=task.limit)
    start = time.perf_counter()
    inject_oom = False
    injected = _injected(task, batch_size, start)
    if injected == "oom":
        inject_oom = True
    elif injected is not None:
        return injected
    size: int | str = task.batch_size or batch_size
    sizes: list[int | str] = [size]
    if oom_retry and isinstance(size, int) and size > 1 and not is_lm:
        sizes.append(size // 2)
    outcome: BenchmarkResult | EvalFailure | None = None
    for attempt, bs in enumerate(sizes):
        remaining = None if timeout_s is None else timeout_s - (time.perf_counter() - start)
        if remaining is not None and remaining <= 0:
            break
        try:
            lm = get_lm(model, tokenizer, batch_size=bs)
        except Exception as exc:  # HFLM refused the model or tokenizer
            return _failure(exc, traceback.format_exc(), task, bs, start, threading.Event())
        outcome = _attempt(lm, task, docs, registry, batch_size=bs, timeout_s=remaining,
                           limit_s=timeout_s, bootstrap_iters=bootstrap_iters,
                           log_samples=log_samples, start=start, inject_oom=inject_oom)
        inject_oom = False
        if isinstance(outcome, BenchmarkResult) and attempt:
            outcome = outcome.model_copy(update={"oom_retries": attempt})
        if not (isinstance(outcome, EvalFailure) and outcome.kind == "oom"):
            break
        _free_device_memory()
        if attempt:
            outcome = outcome.model_copy(update={
                "message": f"{outcome.message} (after a retry at half the batch size "
                           f"{sizes[0]})"})
    if outcome is None:
        outcome = EvalFailure(kind="timeout", task=task.label, batch_size=sizes[-1],
                              message=f"time limit of {timeout_s:g} s reached",
                              seconds=time.perf_counter() - start)
    return outcome


# --------------------------------------------------------------------------------- internals


def _attempt(lm: Any, task: TaskSpec, docs: DocRange, registry: TaskRegistry, *,
             batch_size: int | str,
             timeout_s: float | None, limit_s: float | None, bootstrap_iters: int,
             log_samples: bool, start: float,
             inject_oom: bool = False) -> BenchmarkResult | EvalFailure:
    """One evaluation at one batch size, in a cancellable worker thread when time-limited."""
    cancel = threading.Event()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["out"] = _evaluate(lm, task, docs, registry, batch_size=batch_size,
                                   cancel=cancel,
                                   bootstrap_iters=bootstrap_iters, log_samples=log_samples,
                                   start=start, inject_oom=inject_oom)
        except Exception as exc:  # turned into a failure record
            box["exc"], box["tb"] = exc, traceback.format_exc()

    if timeout_s is None:
        work()
    else:
        worker = threading.Thread(target=work, name=f"eval-{task.label}", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            cancel.set()
            worker.join(CANCEL_GRACE_S)
            note = "" if not worker.is_alive() else \
                "; the worker is still running outside the model and was left behind"
            return EvalFailure(kind="timeout", task=task.label, batch_size=batch_size,
                               message=f"time limit of {limit_s:g} s reached{note}",
                               seconds=time.perf_counter() - start)
    if "exc" in box:
        return _failure(box["exc"], box["tb"], task, batch_size, start, cancel)
    return box["out"]


def _evaluate(lm: Any, task: TaskSpec, docs: DocRange, registry: TaskRegistry, *,
              batch_size: int | str,
              cancel: threading.Event, bootstrap_iters: int, log_samples: bool,
              start: float, inject_oom: bool = False) -> BenchmarkResult | EvalFailure:
    from lm_eval.evaluator import evaluate

    # lm-eval bootstraps some stderrs in a forked multiprocessing pool: unsafe beside threads and
    # CUDA, and slower than serial at these sample sizes. Serial unless the user chose otherwise.
    os.environ.setdefault("DISABLE_MULTIPROC", "1")
    with registry.checkout(task) as loaded, measuring(cancel, inject_oom=inject_oom) as timing:
        samples = {name: idx for name, n in loaded.n_docs.items()
                   if (idx := docs.indices(n, task.sample_seed)) is not None}
        if samples and not any(samples.values()):
            return EvalFailure(kind="exception", task=task.label, batch_size=batch_size,
                               seconds=time.perf_counter() - start,
                               message=f"no documents in {docs} of {loaded.n_docs} documents")
        with _global_seeds(torch_too=_samples(loaded)):
            out = evaluate(lm=lm, task_dict=loaded.task_dict, samples=samples or None,
                           bootstrap_iters=bootstrap_iters, log_samples=True,
                           apply_chat_template=task.apply_chat_template,
                           fewshot_as_multiturn=True)
        return result_of(out, loaded, task, samples, batch_size=batch_size,
                       seconds=time.perf_counter() - start, timing=timing,
                       keep_samples=log_samples)


def _injected(task: TaskSpec, batch_size: int | str,
              start: float) -> EvalFailure | Literal["oom"] | None:
    """The failure ``MMMO_FAULTS`` injects into this attempt, if any (see :mod:`mmmo.hooks`);
    ``"oom"``: the first forward pass is to raise out-of-memory."""
    kind = hooks.injected_fault(task.label)
    if kind is None or kind == "oom":
        return kind
    what = f"injected by {hooks.FAULTS_ENV} (attempt {hooks.current_attempt()})"
    if kind == "raise":
        try:
            raise RuntimeError(f"fault {what}")
        except RuntimeError as exc:
            return _failure(exc, traceback.format_exc(), task, batch_size, start,
                            threading.Event())
    if kind == "timeout":
        return EvalFailure(kind="timeout", task=task.label, batch_size=batch_size,
                           message=f"time limit reached: fault {what}",
                           seconds=time.perf_counter() - start)
    return EvalFailure(kind="nan", task=task.label, batch_size=batch_size,
                       message=f"score is nan: fault {what}",
                       seconds=time.perf_counter() - start)


def _failure(exc: BaseException, tb: str, task: TaskSpec, batch_size: int | str, start: float,
             cancel: threading.Event) -> EvalFailure:
    seconds = time.perf_counter() - start
    line = (str(exc).strip().splitlines() or [""])[0][:300]
    message = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    if isinstance(exc, EvaluationCancelled) or cancel.is_set():
        kind = "timeout"
    elif _is_oom(exc):
        kind = "oom"
        message = f"out of memory at batch size {batch_size}: {message}"
    else:
        kind = "exception"
    return EvalFailure(kind=kind, task=task.label, message=message, batch_size=batch_size,
                       seconds=seconds, traceback=tb)


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_device_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _samples(loaded: LoadedTask) -> bool:
    """Whether any leaf task draws random numbers while generating (``do_sample``)."""
    for task in loaded.leaves.values():
        kwargs = task.get_config("generation_kwargs") or {}
        if task.get_config("output_type") == "generate_until" and kwargs.get("do_sample"):
            return True
    return False


@contextmanager
def _global_seeds(*, torch_too: bool) -> Iterator[None]:
    """Seed python/numpy (and, for a sampling task, torch) as ``simple_evaluate`` does, and
    restore their states after.

    Greedy decoding and loglikelihood requests draw nothing from torch, so torch's generator is
    left alone for them: a merge on another slot (which seeds and draws from it under its lock,
    :mod:`mmmo.rnglock`) is not disturbed. A sampling task holds that lock while it runs.
    The python/numpy states are process-wide: only tasks that draw nothing are reproducible
    when evaluated in parallel threads.
    """
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(_SEEDS["random"])
    np.random.seed(_SEEDS["numpy"])
    try:
        if torch_too:
            import torch

            from mmmo.rnglock import generator_lock

            with generator_lock("cpu"), torch.random.fork_rng(devices=[]):
                torch.manual_seed(_SEEDS["torch"])
                yield
        else:
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

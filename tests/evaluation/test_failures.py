"""Failures are data: exceptions, time-outs, NaN scores and out-of-memory become EvalFailure."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import pytest
import torch

from mmmo.evaluation import BenchmarkResult, EvalFailure, evaluate_benchmark
from mmmo.evaluation import benchmark as benchmark_module
from mmmo.spec import TaskSpec


@contextmanager
def forward_hook(model, fn, *, pre=True):
    handle = model.register_forward_pre_hook(fn) if pre else model.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def model_pair(family, helpers):
    """A private copy of the base (tests install hooks on it)."""
    return helpers.load(family.base)


def roundtrip(failure: EvalFailure) -> EvalFailure:
    return EvalFailure.model_validate(json.loads(json.dumps(failure.model_dump(mode="json"))))


def test_exception_becomes_failure(family, model_pair, registry):
    model, tok = model_pair

    def boom(module, args):
        raise ValueError("boom\nsecond line")

    spec = TaskSpec(task=str(family.tasks["mc"]), limit=4)
    with forward_hook(model, boom):
        out = evaluate_benchmark(model, tok, spec, batch_size=4, registry=registry)
    assert isinstance(out, EvalFailure)
    assert (out.kind, out.task, out.message) == ("exception", "mc", "ValueError: boom")
    assert "Traceback" in out.traceback and roundtrip(out) == out
    after = evaluate_benchmark(model, tok, spec, batch_size=4, registry=registry)
    assert isinstance(after, BenchmarkResult)  # the pooled task object is still usable


def test_timeout_cancels_at_the_next_forward(family, model_pair, registry):
    model, tok = model_pair
    calls = []

    def slow(module, args):
        calls.append(threading.current_thread().name)
        time.sleep(0.2)

    spec = TaskSpec(task=str(family.tasks["gen"]), metric="exact_match", limit=8)
    with forward_hook(model, slow):
        start = time.perf_counter()
        out = evaluate_benchmark(model, tok, spec, batch_size=1, timeout_s=1.0,
                                 registry=registry)
        elapsed = time.perf_counter() - start
        n_calls = len(calls)
        time.sleep(0.5)
        assert len(calls) == n_calls  # the worker stopped: no forward after the failure
    assert isinstance(out, EvalFailure) and out.kind == "timeout", out
    assert "time limit of 1 s" in out.message and "left behind" not in out.message
    assert elapsed < 5.0
    assert all(name.startswith("eval-gen") for name in calls)


def test_nan_score_becomes_failure(family, model_pair, registry):
    model, tok = model_pair

    def nan_logits(module, args, output):
        output.logits = output.logits * float("nan")
        return output

    spec = TaskSpec(task=str(family.tasks["ppl"]), metric="perplexity", limit=4)
    with forward_hook(model, nan_logits, pre=False):
        out = evaluate_benchmark(model, tok, spec, batch_size=4, registry=registry)
    assert isinstance(out, EvalFailure) and out.kind == "nan", out
    assert "perplexity,none of tiny_ppl is nan on 4 documents" in out.message


def oom_above(limit: int):
    def hook(module, args):
        if args[0].shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return hook


def test_oom_retries_at_half_batch_size(family, model_pair, registry):
    model, tok = model_pair
    spec = TaskSpec(task=str(family.tasks["mc"]), limit=8)
    with forward_hook(model, oom_above(4)):
        out = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry)
    assert isinstance(out, BenchmarkResult), out
    assert (out.batch_size, out.oom_retries) == (4, 1)
    plain = evaluate_benchmark(model, tok, spec, batch_size=4, registry=registry)
    assert out.score == plain.score


def test_oom_reports_the_batch_size_that_failed(family, model_pair, registry):
    model, tok = model_pair
    spec = TaskSpec(task=str(family.tasks["mc"]), limit=8)
    with forward_hook(model, oom_above(1)):
        out = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry)
        single = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry,
                                    oom_retry=False)
    assert isinstance(out, EvalFailure) and out.kind == "oom", out
    assert out.batch_size == 4
    assert out.message.startswith("out of memory at batch size 4: OutOfMemoryError")
    assert "after a retry at half the batch size 8" in out.message
    assert isinstance(single, EvalFailure) and single.batch_size == 8


def test_injected_oom_takes_the_half_batch_retry(family, model_pair, registry, monkeypatch):
    from mmmo.hooks import evaluating, fault_plan

    model, tok = model_pair
    spec = TaskSpec(task=str(family.tasks["mc"]), limit=8)
    plain = evaluate_benchmark(model, tok, spec, batch_size=4, registry=registry)
    monkeypatch.setenv("MMMO_FAULTS", "oom=1,seed=0")
    with evaluating("recipe", 0):
        out = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry)
        once = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry,
                                  oom_retry=False)
    assert isinstance(out, BenchmarkResult), out
    assert (out.batch_size, out.oom_retries, out.score) == (4, 1, plain.score)
    assert isinstance(once, EvalFailure) and (once.kind, once.batch_size) == ("oom", 8)
    assert "injected by MMMO_FAULTS" in once.message
    untouched = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry)
    assert isinstance(untouched, BenchmarkResult) and untouched.oom_retries == 0  # no trial
    with pytest.raises(ValueError, match="sum to <= 1"):
        fault_plan("oom=0.6,raise=0.5")


def test_runtime_error_out_of_memory_is_oom(family, model_pair, registry, monkeypatch):
    model, tok = model_pair

    def hook(module, args):
        raise RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")

    monkeypatch.setattr(benchmark_module, "_free_device_memory", lambda: None)
    spec = TaskSpec(task=str(family.tasks["mc"]), limit=2)
    with forward_hook(model, hook):
        out = evaluate_benchmark(model, tok, spec, batch_size=1, registry=registry)
    assert isinstance(out, EvalFailure) and (out.kind, out.batch_size) == ("oom", 1)


def test_timeout_outside_the_model_leaves_a_worker_that_cannot_run_it(
        family, model_pair, registry, monkeypatch):
    """A worker stuck outside the model is left behind, and may no longer use the model."""
    model, tok = model_pair
    spec = TaskSpec(task=str(family.tasks["mc"]), limit=4)
    with registry.checkout(spec):
        pass  # pooled: the slow checkout below only sleeps
    real_checkout = registry.checkout

    @contextmanager
    def slow_checkout(task):
        time.sleep(1.5)  # e.g. a dataset download that hangs
        with real_checkout(task) as loaded:
            yield loaded

    monkeypatch.setattr(registry, "checkout", slow_checkout)
    monkeypatch.setattr(benchmark_module, "CANCEL_GRACE_S", 0.1)
    forwards = []
    with forward_hook(model, lambda module, args, out: forwards.append(1), pre=False):
        start = time.perf_counter()
        out = evaluate_benchmark(model, tok, spec, batch_size=4, timeout_s=0.3,
                                 registry=registry)
        assert time.perf_counter() - start < 1.2
        time.sleep(2.0)  # the worker wakes up, reaches the model, and is stopped there
    assert isinstance(out, EvalFailure) and out.kind == "timeout"
    assert "left behind" in out.message
    assert forwards == []  # no forward pass completed after the time limit

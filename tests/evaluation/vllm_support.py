"""Shared by the vLLM backend tests: the engine environment check, the spec, per-document results.

Not a test module (no ``test_`` prefix); imported by path-independent name through
``tests/evaluation`` being a rootdir-relative package under importlib mode.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

REQUIRE_ENV = "MMMO_REQUIRE_VLLM"
"""Set (by ``make test``) to make a missing engine environment a failure instead of a skip."""


def need_engine_env() -> tuple[str, ...]:
    """The engine environment's launcher; skip (or fail under MMMO_REQUIRE_VLLM) without one."""
    from mmmo.evaluation.vllm.env import INSTALL_HINT, launcher_for, probe

    launcher, where = launcher_for(None)
    problem = None
    if launcher is None:
        problem = f"no vLLM engine environment ({where})"
    else:
        try:
            if probe(launcher).flavor is None:
                problem = f"{launcher[0]} has no vLLM"
        except (OSError, RuntimeError) as exc:
            problem = f"{launcher[0]} does not run: {exc}"
    if problem is None:
        return launcher
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{problem}; {REQUIRE_ENV} is set: {INSTALL_HINT}", pytrace=False)
    pytest.skip(f"{problem}: {INSTALL_HINT}")
    raise AssertionError  # unreachable


def fixture_spec(**compute: Any) -> Any:
    """A dare_ties spec over the fixture family, ``compute.backend: vllm`` on CPU, float32."""
    from mmmo.spec import parse_spec

    vllm = {"max_model_len": 64, "health_timeout_seconds": 5, "startup_timeout_seconds": 900,
            "num_concurrent": 4, **compute.pop("vllm", {})}
    return parse_spec({
        "name": "vllm-test", "base": {"path": "fixture:models/base"},
        "sources": [{"path": f"fixture:models/{n}"} for n in ("dbl", "rev", "srt")],
        "merge": {"method": "dare_ties", "normalize": False, "random_seed": 0},
        "objectives": {"tasks": [{"task": "fixture:tasks/dbl.yaml", "metric": "acc"}]},
        "compute": {"device": "cpu", "dtype": "float32", "backend": "vllm", "vllm": vllm,
                    **compute}})


def per_doc(result: Any, metric: str) -> dict[int, tuple[float, Any]]:
    """``{doc_id: (metric value, filtered responses)}`` of a benchmark run with log_samples."""
    assert hasattr(result, "raw"), f"the benchmark failed: {result}"
    (rows,) = result.raw["samples"].values()
    return {int(r["doc_id"]): (float(r[metric]), r["filtered_resps"]) for r in rows}


def compare(ours: dict[int, tuple[float, Any]], ref: dict[int, tuple[float, Any]], *,
            what: str, loglikelihood: bool) -> list[int]:
    """Documents whose metric differs (a near-tie a kernel difference flipped); asserts at most
    one, and for loglikelihood tasks that every choice's log-probability agrees (1e-3 + 1e-4
    relative: the two backends' fp32 kernels differ in summation order only)."""
    assert ours.keys() == ref.keys(), f"{what}: different documents"
    flipped = [d for d in sorted(ours) if ours[d][0] != ref[d][0]]
    assert len(flipped) <= 1, f"{what}: {len(flipped)} documents differ: {flipped[:10]}"
    if loglikelihood:
        for doc, (_, resps) in ours.items():
            for (ll, _g), (ref_ll, _rg) in zip(resps, ref[doc][1], strict=True):
                assert abs(ll - ref_ll) <= 1e-3 + 1e-4 * abs(ref_ll), (
                    f"{what}: doc {doc}: loglikelihood {ll} vs hf {ref_ll}")
    elif not flipped:
        assert all(ours[d][1] == ref[d][1] for d in ours), f"{what}: generations differ"
    if flipped:
        print(f"{what}: near-tie flipped on document {flipped[0]}: vllm {ours[flipped[0]]}, "
              f"hf {ref[flipped[0]]}")
    return flipped

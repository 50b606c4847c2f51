"""Cache keys of the expensive tasks: the recipe id plus exactly what the task depends on.

Prefect's default policy includes the flow run id, so nothing would be reused across runs;
these keys are stable across runs, processes and machines, so a resumed or repeated search
re-uses every merge and benchmark it already computed. Bump the versions when the meaning
of a result changes.
"""

from __future__ import annotations

import hashlib
from typing import Any

MERGE_VERSION = 1

__all__ = ["benchmark_cache_key", "merge_cache_key", "reference_cache_key"]


def merge_cache_key(_ctx: Any, inputs: dict[str, Any]) -> str:
    """``merge-<recipe id>``: a recipe's id covers its values, settings and model revisions."""
    return f"merge-v{MERGE_VERSION}-{inputs['recipe']['recipe_id']}"


def benchmark_cache_key(_ctx: Any, inputs: dict[str, Any]) -> str:
    """``bench-<hash>`` of recipe id + task + limit + seed + fewshot + model revisions."""
    from mmmo.evaluation import benchmark_key
    from mmmo.runtime import session

    search = session(inputs["study_url"]).search
    task = search.spec.task(inputs["objective"])
    return "bench-" + benchmark_key(inputs["recipe"]["recipe_id"], task,
                                    model_fingerprints=search.space.fingerprints)


def reference_cache_key(_ctx: Any, inputs: dict[str, Any]) -> str:
    """``ref-<hash>`` of a single model's fingerprint + the task's evaluation settings."""
    from mmmo.evaluation import benchmark_key
    from mmmo.runtime import session

    search = session(inputs["study_url"]).search
    task = search.spec.task(inputs["task_name"])
    fingerprint = search.space.fingerprint_of(inputs["model"])
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return "ref-" + benchmark_key(f"model-{digest}", task, model_fingerprints=[fingerprint])

"""Cache keys of the expensive tasks: the recipe id plus exactly what the task depends on.

Prefect's default policy includes the flow run id, so nothing would be reused across runs;
these keys are stable across runs, processes and machines, so a resumed or repeated search
re-uses every merge and benchmark it already computed. Bump the versions when the meaning
of a result changes.
"""

from __future__ import annotations

from typing import Any

MERGE_VERSION = 1

__all__ = ["benchmark_cache_key", "merge_cache_key", "reference_cache_key"]


def merge_cache_key(_ctx: Any, inputs: dict[str, Any]) -> str:
    """``merge-<recipe id>``: a recipe's id covers its values, settings and model revisions."""
    return f"merge-v{MERGE_VERSION}-{inputs['recipe']['recipe_id']}"


def benchmark_cache_key(_ctx: Any, inputs: dict[str, Any]) -> str:
    """``bench-<hash>`` of recipe id + task + limit + seed + fewshot + model revisions."""
    from mmmo.runtime import session

    search = session(inputs["study_url"]).search
    return "bench-" + search.benchmark_key(inputs["recipe"]["recipe_id"], inputs["objective"])


def reference_cache_key(_ctx: Any, inputs: dict[str, Any]) -> str:
    """``ref-<hash>`` of a single model's fingerprint + the task's evaluation settings."""
    from mmmo.runtime import session

    search = session(inputs["study_url"]).search
    return "ref-" + search.reference_key(inputs["model"], inputs["task_name"])

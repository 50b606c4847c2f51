"""The cache key of every result: one function per kind, used by every executor.

- ``merge-v1-<recipe id>``: a recipe's merge info (sparsity, timings). The recipe id covers
  its values, settings and the models' fingerprints; the merge does not depend on the backend.
- ``bench-<hash>``: one benchmark of a recipe, a slice of a task's documents
  (:func:`mmmo.evaluation.benchmark_key`: recipe, task content and settings, documents, model
  fingerprints, backend, evaluation version).
- ``ref-<hash>``: the same for a single model of the family (base or a source).

Bump :data:`MERGE_VERSION` when the meaning of a merge info changes (the benchmark key has its
own ``EVAL_VERSION``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from mmmo.evaluation.tasks import DocRange

__all__ = ["MERGE_VERSION", "benchmark_key", "merge_key", "reference_key"]

MERGE_VERSION = 1


def merge_key(recipe_id: str) -> str:
    """The key of a recipe's merge info."""
    return f"merge-v{MERGE_VERSION}-{recipe_id}"


def _backend(spec: Any) -> str:
    return getattr(spec.compute, "backend", "hf")


def benchmark_key(search: Any, recipe_id: str, task_name: str, docs: DocRange) -> str:
    """The key of a recipe's score on ``docs`` of the task called ``task_name``."""
    from mmmo.evaluation import benchmark_key as key

    return "bench-" + key(recipe_id, search.spec.task(task_name),
                          model_fingerprints=search.space.fingerprints, docs=docs,
                          backend=_backend(search.spec))


def reference_key(search: Any, label: str, task_name: str, docs: DocRange) -> str:
    """The key of a single model's (base or source, by label) score on ``docs`` of a task."""
    from mmmo.evaluation import benchmark_key as key

    fingerprint = search.space.fingerprint_of(label)
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return "ref-" + key(f"model-{digest}", search.spec.task(task_name),
                        model_fingerprints=[fingerprint], docs=docs,
                        backend=_backend(search.spec))

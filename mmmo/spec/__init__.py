"""The search spec: one YAML document, validated by pydantic, drives the CLI, flows and deployments.

A spec says *what* to search (models, merge method, searched parameters, objectives, held-out
tasks, optimizer, final-pick policy) and *where* to keep it (storage) and *how* to run it
(compute, evaluation retries). :func:`load_spec` reads it from a path or any fsspec URL.

Every invalid field fails with :class:`~mmmo.errors.SpecError`, whose message is one line
naming the field, the bad value and the fix, e.g.::

    fixture.yaml: objectives.tasks[0].limit: must be a count >= 1 or a fraction in (0, 1]
    (got -3); fix: set a positive count (e.g. 100) or a fraction (e.g. 0.25)

Model references are a local folder (relative paths resolve against the spec's folder), a
Hugging Face hub id (``org/name``), or ``fixture:models/<name>`` (``fixture:layered/models/<name>``)
for the bundled offline families.
Task references are an lm-eval task name, a task YAML path, or ``fixture:tasks/<name>.yaml``
(``fixture:layered/tasks/<name>.yaml``).
"""

from __future__ import annotations

from mmmo.spec.base import (
    _STUDY,
    ADMISSIBLE,
    SEARCH_DEFAULTS,
    TASK_ARITHMETIC_METHODS,
    FieldProblem,
)
from mmmo.spec.budget import ConfirmSpec, FidelitySpec
from mmmo.spec.compute import ComputeSpec, EvaluationSpec, VLLMSpec
from mmmo.spec.loading import load_spec, parse_spec
from mmmo.spec.models import MergeSpec, ModelSpec, method_parameters
from mmmo.spec.root import SearchSpec
from mmmo.spec.search import BaselineSpec, ConstraintSpec, OptimizerSpec, PickSpec
from mmmo.spec.tasks import ObjectiveSpec, ObjectivesSpec, SparsitySpec, TaskSpec

__all__ = [
    "ADMISSIBLE",
    "SEARCH_DEFAULTS",
    "TASK_ARITHMETIC_METHODS",
    "_STUDY",
    "BaselineSpec",
    "ComputeSpec",
    "ConfirmSpec",
    "ConstraintSpec",
    "EvaluationSpec",
    "FidelitySpec",
    "FieldProblem",
    "MergeSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "ObjectivesSpec",
    "OptimizerSpec",
    "PickSpec",
    "SearchSpec",
    "SparsitySpec",
    "TaskSpec",
    "VLLMSpec",
    "load_spec",
    "method_parameters",
    "parse_spec",
]

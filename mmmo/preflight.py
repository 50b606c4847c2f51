"""Checks before any expensive work: nothing is loaded, nothing is written.

:func:`check_inputs` is what ``mmmo run`` (and :meth:`mmmo.search.Search.open`) call after the
spec itself validated: the compute device, the models (configs, safetensors headers and
vocabularies only), the search space against the models (layer groups against their depth,
della's density/epsilon, enough distinct recipes for the budget), every task (resolved, loaded
offline, metric and filter present, duplicate keys refused), and, with ``storage``, the store
(reachable, writable) and the study (the same search if it exists, no live lease).

Each problem raises one :class:`~mmmo.errors.MmmoError` line naming the field and the fix (exit
code 2). What is allowed but almost surely a mistake (a pick constraint no trial can meet) is
returned as warning lines instead.
"""

from __future__ import annotations

import math
from typing import Any

from mmmo.errors import SpecError, SpecWarning
from mmmo.spec import SearchSpec

__all__ = ["check_device", "check_documents", "check_inputs", "check_models", "check_space",
           "spec_warnings"]

#: lm-eval metrics whose score lies in [0, 1].
UNIT_METRICS = frozenset({"acc", "acc_norm", "acc_mutual_info", "exact_match", "em", "f1",
                          "brier_score", "pass@1", "pass_at_1", "accuracy"})


def check_inputs(spec: SearchSpec, *, storage: bool = False,
                 storage_options: dict[str, Any] | None = None) -> list[SpecWarning]:
    """Every cheap check of ``spec`` against this machine, its models, tasks and storage.

    Returns:
        Warnings about what is allowed but suspicious (see :func:`spec_warnings`).

    Raises:
        SpecError, HomologyError, StudyError: one line naming the field and the fix.
    """
    from mmmo.evaluation import validate_tasks
    from mmmo.evaluation.vllm import preflight as engine_preflight
    from mmmo.hooks import fault_plan

    fault_plan()  # MMMO_FAULTS (test-only) is read by the evaluations: refuse a bad one now
    check_device(spec.compute.device)
    check_models(spec)
    check_space(spec)
    engine_preflight(spec)
    if spec.optimizer.warm_start:
        from mmmo.warmstart import check_donors

        check_donors(spec)
    validate_tasks(spec.objectives.tasks, field="objectives.tasks")
    validate_tasks(spec.heldout, field="heldout")
    check_documents(spec)
    if storage:
        from mmmo.storage import check_storage
        from mmmo.study import check_study

        check_storage(spec.storage, storage_options=storage_options)
        check_study(spec, storage_options=storage_options)
    return spec_warnings(spec)


def check_documents(spec: SearchSpec) -> None:
    """Confirmation needs documents the search does not use; fidelity levels need documents
    and a metric that is a mean over them. One line naming the field and the fix."""
    from mmmo.evaluation.tasks import DocRange, averages_documents, task_sizes
    from mmmo.fidelity import Levels

    levels = Levels(spec)
    for i, task in enumerate(spec.objectives.tasks):
        where = f"objectives.tasks[{i}]"
        sizes = task_sizes(task)
        n = sum(sizes.values())
        used = sum(DocRange(stop=task.limit).count(k) for k in sizes.values())
        if spec.confirm.enabled and used >= n:
            raise SpecError(f"{where}.limit", f"uses all {n} documents of {task.label}, "
                            "leaving none to confirm the final table on", value=task.limit,
                            fix=f"lower it (e.g. to {max(1, (2 * n) // 3)}) so that the pick "
                            "is confirmed on documents that did not choose it, or set "
                            "confirm.enabled: false")
        if levels.enabled:
            first = sum(levels.chunk(task, 0).count(k) for k in sizes.values())
            if first < 1 or levels.stop(task, 0) == task.limit:
                raise SpecError("optimizer.fidelity.levels", f"its first level gives "
                                f"{task.label} {first} of its {used} documents",
                                value=list(levels.levels), fix="start with a level of at "
                                "least one document and below the whole subsample")
            if not averages_documents(task):
                raise SpecError(f"{where}.metric", f"is not a mean over documents in "
                                f"{task.label}: its fidelity levels cannot be combined",
                                value=task.metric, fix="use a mean metric (acc, "
                                "exact_match, ...) or remove optimizer.fidelity")


def check_device(device: str) -> None:
    """Raise a one-line SpecError when ``compute.device`` is not on this machine."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (index and int(index) >= count):
            raise SpecError("compute.device", f"this machine has {count} CUDA device(s)",
                            value=device, fix="use auto or cpu, or an index below "
                            f"{max(count, 1)}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SpecError("compute.device", "MPS is not available on this machine",
                        value=device, fix="use auto or cpu")


def check_models(spec: SearchSpec) -> None:
    """Homology of every source with the base; the error names the spec field at fault.

    Raises:
        HomologyError: one line (``base.path`` / ``sources[i].path``), no weight read.
    """
    from mmmo.merging import check_homology

    fields = ["base.path", *(f"sources[{i}].path" for i in range(len(spec.sources)))]
    check_homology(spec.base, list(spec.sources), fields=fields)


def check_space(spec: SearchSpec) -> None:
    """The search space against the models: layer groups, della, distinct recipes vs budget.

    Reads the base's ``config.json`` only (run after :func:`check_models`).

    Raises:
        SpecError: ``merge.layer_groups`` above the models' depth; sources' bounds della cannot
            use; fewer distinct recipes than the budget (``merge.rounding``); nothing to search.
    """
    from mmmo.merging.homology import layer_count
    from mmmo.merging.recipe import ModelEntry
    from mmmo.space import SearchSpace

    k = spec.merge.layer_groups
    depth = layer_count(spec.base)
    if depth is not None and k > depth:
        raise SpecError("merge.layer_groups", f"is more than the models' {depth} layers "
                        "(one knot per layer at most)", value=k,
                        fix=f"use 1 to {depth} (1 = one value per source)")
    # the models' identities do not change the space's shape: no need to fingerprint them here
    entries = [ModelEntry(ref=m.path, label=m.label, revision=m.revision, fingerprint="0" * 16)
               for m in (spec.base, *spec.sources)]
    space = SearchSpace.from_spec(spec, entries=entries)
    budget = spec.optimizer.budget
    if space.dim == 0:
        raise SpecError("merge.parameters", "fixes every parameter of every source: nothing "
                        "to search", has_value=False, fix="give at least one parameter an "
                        "interval [low, high] (in merge.parameters or a source's parameters)")
    unit = 10.0 ** spec.merge.rounding
    log_count = 0.0
    for low, high in space.bounds.T:  # grid points strictly inside, plus both bounds (kept
        inside = math.ceil(high * unit - 1e-9) - math.floor(low * unit + 1e-9) - 1  # exactly)
        log_count += math.log(max(inside, 0) + 2)
    if log_count < math.log(budget):
        count = round(math.exp(log_count))
        raise SpecError("merge.rounding", f"leaves at most {count} distinct recipes for a "
                        f"budget of {budget} trials", value=spec.merge.rounding,
                        fix="round to more decimals, widen the bounds, or lower the budget")


def spec_warnings(spec: SearchSpec) -> list[SpecWarning]:
    """What is valid but almost surely a mistake (``str(w)`` is its line).

    Pick constraints no trial could meet: a [0, 1] metric (accuracy, exact match, ...) with a
    ``min`` above 1 or a ``max`` below 0, a sparsity (an L1 norm, >= 0) with a ``max`` below 0.
    """
    out = []
    tasks = {o.label: o for o in spec.objectives.tasks}
    sparsity = spec.objectives.sparsity.name if spec.objectives.sparsity.enabled else None
    fix = "relax it, or the search ends without a pick (exit 3)"
    for i, c in enumerate(spec.pick.constraints):
        where = f"pick.constraints[{i}]"
        if c.objective in tasks and tasks[c.objective].metric in UNIT_METRICS:
            metric = tasks[c.objective].metric
            if c.min is not None and c.min > 1:
                out.append(SpecWarning(f"{where}.min", f"{c.objective} ({metric}) scores at "
                                       "most 1: no trial can reach it", value=c.min, fix=fix))
            if c.max is not None and c.max < 0:
                out.append(SpecWarning(f"{where}.max", f"{c.objective} ({metric}) scores at "
                                       "least 0: no trial can stay below it", value=c.max,
                                       fix=fix))
        if c.objective == sparsity and c.max is not None and c.max < 0:
            out.append(SpecWarning(f"{where}.max", f"{sparsity} is an L1 norm (>= 0): no trial "
                                   "can stay below it", value=c.max, fix=fix))
    return out

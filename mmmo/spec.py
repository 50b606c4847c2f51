"""The search spec: one YAML document, validated by pydantic, drives the CLI, flows and deployments.

A spec says *what* to search (models, merge method, searched parameters, objectives, held-out
tasks, optimizer, final-pick policy) and *where* to keep it (storage) and *how* to run it
(compute, evaluation retries). :func:`load_spec` reads it from a path or any fsspec URL.

Every invalid field fails with :class:`~mmmo.errors.SpecError`, whose message is one line
naming the field, the bad value and the fix, e.g.::

    fixture.yaml: objectives.tasks[0].limit: must be a count >= 1 or a fraction in (0, 1]
    (got -3); fix: set a positive count (e.g. 100) or a fraction (e.g. 0.25)

Model references are a local folder (relative paths resolve against the spec's folder), a
Hugging Face hub id (``org/name``), or ``fixture:models/<name>`` for the bundled offline family.
Task references are an lm-eval task name, a task YAML path, or ``fixture:tasks/<name>.yaml``.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import fsspec
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mmmo.errors import SpecError
from mmmo.spec_budget import ConfirmSpec, FidelitySpec

__all__ = [
    "TASK_ARITHMETIC_METHODS",
    "BaselineSpec",
    "ComputeSpec",
    "ConstraintSpec",
    "EvaluationSpec",
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
    "parse_spec",
]

#: mergekit's task-arithmetic family: the methods a recipe may use.
TASK_ARITHMETIC_METHODS: tuple[str, ...] = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
)

#: Default search bounds of per-model parameters, and the range mergekit accepts for each.
SEARCH_DEFAULTS: dict[str, tuple[float, float]] = {
    "weight": (0.0, 1.0),
    "density": (0.1, 1.0),
    "gamma": (0.0, 0.05),
    "epsilon": (0.0, 0.2),
}
ADMISSIBLE: dict[str, tuple[float, float]] = {
    "weight": (-10.0, 10.0),
    "density": (0.0, 1.0),
    "gamma": (0.0, 0.5),
    "epsilon": (0.0, 0.5),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STUDY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class FieldProblem(ValueError):
    """Raised inside validators: a problem and its fix, optionally at a sub-field."""

    def __init__(self, problem: str, fix: str, *, field: str | None = None,
                 value: object = None, has_value: bool = False) -> None:
        super().__init__(problem)
        self.problem, self.fix, self.field = problem, fix, field
        self.value, self.has_value = value, has_value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Bound = float | tuple[float, float]
"""A searched parameter's bounds ``[low, high]``, or a single number that fixes it."""


def _is_local(ref: str, base_dir: Path | None) -> Path | None:
    """The local path ``ref`` names, or None when it is a hub id / fixture / task name."""
    if ref.startswith("fixture:"):
        return None
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    explicit = ref.startswith((".", "/", "~")) or ref.endswith((".yaml", ".yml"))
    return path.resolve() if explicit or path.exists() else None


def _base_dir(info: ValidationInfo) -> Path | None:
    return (info.context or {}).get("base_dir")


class ModelSpec(_Frozen):
    """A model of the family: local folder, hub id or ``fixture:models/<name>``."""

    path: str
    name: str | None = None
    revision: str | None = None
    parameters: dict[str, Bound] = Field(default_factory=dict)
    """Per-model override of ``merge.parameters`` (sources only)."""

    @field_validator("path")
    @classmethod
    def _check_path(cls, ref: str, info: ValidationInfo) -> str:
        ref = ref.strip()
        if not ref:
            raise FieldProblem("is empty", "give a local folder, a hub id like "
                               "'Qwen/Qwen1.5-7B', or fixture:models/<name>")
        local = _is_local(ref, _base_dir(info))
        if local is not None:
            if not (local / "config.json").is_file():
                raise FieldProblem(f"no model folder with a config.json at {local}",
                                   "point it at an HF model folder, or use a hub id",
                                   value=ref, has_value=True)
            return str(local)
        if ref.startswith("fixture:"):
            if not ref.startswith("fixture:models/"):
                raise FieldProblem("fixture models live under fixture:models/",
                                   "write fixture:models/<name>", value=ref, has_value=True)
            return ref
        if not _HUB_ID.match(ref):
            raise FieldProblem("is neither an existing folder nor a hub id",
                               "check the path (relative paths resolve against the "
                               "spec's folder) or write a hub id like 'org/name'",
                               value=ref, has_value=True)
        return ref

    @property
    def label(self) -> str:
        """The model's short name: ``name``, else the last component of its path."""
        return self.name or self.path.rstrip("/").split("/")[-1].split(":")[-1]


class MergeSpec(_Frozen):
    """The merge method, its fixed settings and the per-model parameters the search varies."""

    method: str = "dare_ties"
    normalize: bool | None = None
    """mergekit's ``normalize``; None keeps the method's default, written out in every recipe."""
    int8_mask: bool = False
    random_seed: int = 0
    options: dict[str, float | bool] = Field(default_factory=dict)
    """Other shared (non-per-model) parameters of the method, e.g. ``rescale``, ``lambda``."""
    parameters: dict[str, Bound] = Field(default_factory=dict)
    """Bounds of per-model parameters; unlisted ones of the method get SEARCH_DEFAULTS."""
    layer_groups: int = Field(default=1, ge=1, le=64)
    """1 = one value per model; k > 1 = a k-point gradient over layers (mergekit lists)."""
    rounding: int = Field(default=2, ge=0, le=6)
    """Decimals a recipe's values are rounded to; rounded values identify a recipe."""

    @field_validator("method")
    @classmethod
    def _check_method(cls, method: str) -> str:
        if method not in TASK_ARITHMETIC_METHODS:
            close = difflib.get_close_matches(method, TASK_ARITHMETIC_METHODS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise FieldProblem("is not a method of mergekit's task-arithmetic family",
                               f"{hint}use one of {', '.join(TASK_ARITHMETIC_METHODS)}",
                               value=method, has_value=True)
        return method

    @model_validator(mode="after")
    def _check_parameters(self) -> MergeSpec:
        per_model, shared = method_parameters(self.method)
        for key, value in self.options.items():
            if key not in shared or key in ("normalize", "int8_mask"):
                allowed = sorted(set(shared) - {"normalize", "int8_mask"})
                raise FieldProblem(f"'{key}' is not a shared option of {self.method}",
                                   f"use one of {allowed} (normalize/int8_mask are "
                                   "fields of merge)", field=f"options.{key}",
                                   value=value, has_value=True)
        for key, bound in self.parameters.items():
            _check_bound(key, bound, per_model, self.method, f"parameters.{key}")
            _check_read(key, bound, self.method, f"parameters.{key}")
        return self

    def searched_parameters(self) -> list[str]:
        """Per-model parameters of the method, in mergekit's declaration order."""
        return list(method_parameters(self.method)[0])

    def default_bound(self, key: str) -> Bound:
        """The bound of ``key`` for a model that does not override it."""
        return self.parameters.get(key, SEARCH_DEFAULTS.get(key, (0.0, 1.0)))

    def fixed_settings(self) -> dict[str, Any]:
        """Shared settings written into every recipe (``normalize`` always explicit)."""
        _, shared = method_parameters(self.method)
        out: dict[str, Any] = dict(self.options)
        if "normalize" in shared:
            out["normalize"] = shared["normalize"] if self.normalize is None else self.normalize
        if "int8_mask" in shared:
            out["int8_mask"] = self.int8_mask
        return out


@cache
def method_parameters(method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """mergekit's own declaration of ``method``: (per-model params, shared params) -> default.

    Read from ``mergekit.merge_methods.get(method).spec`` so the parameters are declared once,
    by mergekit, not in a second hand-kept map.
    """
    from mergekit.merge_methods import get

    per_model: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    for p in get(method).spec.parameters:
        target = shared if p.scope.value == "shared" else per_model
        target[p.name] = None if p.required else p.default
    return per_model, shared


def _inert(method: str) -> frozenset[str]:
    from mmmo.merging.recipe import inert_parameters

    return inert_parameters(method)


def _check_read(key: str, bound: Bound, method: str, field: str) -> None:
    """A parameter that mergekit declares for ``method`` but never reads cannot be set."""
    if key in _inert(method):
        raise FieldProblem(f"mergekit's {method} declares '{key}' but never reads it",
                           f"remove it (or use a method that reads {key}, e.g. dare_ties)",
                           field=field, value=bound, has_value=True)


def _check_bound(key: str, bound: Bound, per_model: dict[str, Any], method: str,
                 field: str) -> None:
    if key not in per_model:
        raise FieldProblem(f"'{key}' is not a per-model parameter of {method}",
                           f"use one of {list(per_model)}", field=field,
                           value=bound, has_value=True)
    lo_ok, hi_ok = ADMISSIBLE.get(key, (float("-inf"), float("inf")))
    low, high = (bound, bound) if isinstance(bound, float | int) else bound
    if low > high:
        raise FieldProblem("low bound is above the high bound", "write [low, high] "
                           "with low <= high", field=field, value=list(bound), has_value=True)
    if low < lo_ok or high > hi_ok or (key == "density" and low <= 0.0):
        raise FieldProblem(f"is outside the range mergekit accepts for {key}",
                           f"keep it within [{lo_ok}, {hi_ok}]"
                           + (" and above 0" if key == "density" else ""),
                           field=field, value=bound, has_value=True)


class TaskSpec(_Frozen):
    """One lm-eval task and how to score it."""

    task: str
    """lm-eval task name, a task YAML path, or ``fixture:tasks/<name>.yaml``."""
    name: str | None = None
    metric: str = "acc"
    filter: str = "none"
    limit: Annotated[int, Field(ge=1)] | float | None = None
    """Documents per evaluation: a count >= 1 or a fraction in (0, 1]; None = all."""
    sample_seed: int = 1234
    """Seed of the fixed subsample (the same documents for every trial)."""
    num_fewshot: int | None = Field(default=None, ge=0)
    apply_chat_template: bool = False
    gen_kwargs: dict[str, Any] = Field(default_factory=dict)
    batch_size: int | None = Field(default=None, ge=1)
    """Overrides ``compute.batch_size`` for this task."""

    @field_validator("task")
    @classmethod
    def _check_task(cls, ref: str, info: ValidationInfo) -> str:
        ref = ref.strip()
        if ref.startswith("fixture:"):
            if not (ref.startswith("fixture:tasks/") and ref.endswith((".yaml", ".yml"))):
                raise FieldProblem("fixture tasks are YAML files under fixture:tasks/",
                                   "write fixture:tasks/<name>.yaml", value=ref,
                                   has_value=True)
            return ref
        local = _is_local(ref, _base_dir(info))
        if local is not None:
            if not local.is_file():
                raise FieldProblem(f"no task YAML at {local}", "fix the path (relative "
                                   "paths resolve against the spec's folder)", value=ref,
                                   has_value=True)
            return str(local)
        if not re.match(r"^[\w.-]+$", ref):
            raise FieldProblem("is neither a task YAML file nor an lm-eval task name",
                               "give an lm-eval task name like 'gsm8k' or a path to a "
                               "task .yaml", value=ref, has_value=True)
        return ref

    @field_validator("limit")
    @classmethod
    def _check_limit(cls, limit: int | float | None) -> int | float | None:
        if isinstance(limit, float) and not 0.0 < limit <= 1.0:
            raise FieldProblem("must be a count >= 1 or a fraction in (0, 1]",
                               "set a positive count (e.g. 100) or a fraction (e.g. 0.25)",
                               value=limit, has_value=True)
        return limit

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name is not None and not _NAME.match(name):
            raise FieldProblem("must be letters, digits, '_', '.', '-'",
                               "rename it, e.g. 'gsm8k_subset'", value=name, has_value=True)
        return name

    @property
    def label(self) -> str:
        """The task's short name: ``name``, else the YAML stem or the task name."""
        if self.name:
            return self.name
        stem = self.task.rstrip("/").split("/")[-1]
        return re.sub(r"\.ya?ml$", "", stem)


class ObjectiveSpec(TaskSpec):
    """A task whose score the search optimises."""

    direction: Literal["maximize", "minimize"] = "maximize"


class SparsitySpec(_Frozen):
    """The paper's sparsity objective: sum |merged - base| over all parameters, minimised."""

    enabled: bool = True
    name: str = "sparsity"


class ObjectivesSpec(_Frozen):
    """Task objectives plus the sparsity objective."""

    tasks: list[ObjectiveSpec] = Field(min_length=1)
    sparsity: SparsitySpec = Field(default_factory=SparsitySpec)

    @field_validator("sparsity", mode="before")
    @classmethod
    def _bool_sparsity(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


_SPEC_SET = {"n_init", "rounding", "task_objectives"}
"""Strategy settings the spec sets itself (from optimizer.n_init, merge.rounding, objectives)."""


class OptimizerSpec(_Frozen):
    """Which strategy proposes recipes, and the evaluation budget."""

    strategy: str = "mmmo"
    n_init: int = Field(default=10, ge=1)
    batch_size: int = Field(default=5, ge=1)
    iterations: int = Field(default=4, ge=0)
    seed: int = 0
    fidelity: FidelitySpec | None = None
    """Multi-fidelity evaluation (successive halving over nested document levels); None: every
    recipe is scored on each objective's whole subsample."""
    warm_start: list[str] = Field(default_factory=list)
    """Studies (``<storage>/<study>`` URLs or paths) whose trials are told to the optimizer
    before the first ask, without evaluating them again: same models, method, search space and
    objective tasks required. They count for the front, not for the budget."""
    schedule: Literal["batch", "async"] = "batch"
    """``batch``: the paper's synchronous iterations (propose ``batch_size``, evaluate them all,
    update); ``async``: whenever a slot frees, ask for one recipe with the trials in flight as
    pending points (no slot waits for the slowest trial of a batch). The budget is the same."""
    settings: dict[str, Any] = Field(default_factory=dict)
    """Strategy settings, validated by the strategy's own settings model."""

    @model_validator(mode="after")
    def _check_strategy(self) -> OptimizerSpec:
        from mmmo import optimization

        names = optimization.strategy_names()
        if self.strategy not in names:
            close = difflib.get_close_matches(self.strategy, names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise FieldProblem("is not a known strategy", f"{hint}use one of "
                               f"{', '.join(names)}", field="strategy",
                               value=self.strategy, has_value=True)
        for key in sorted(_SPEC_SET):
            if key in self.settings:
                where = {"n_init": "optimizer.n_init", "rounding": "merge.rounding",
                         "task_objectives": "objectives"}[key]
                raise FieldProblem(f"'{key}' is set by the spec itself",
                                   f"remove it here; set {where} instead",
                                   field=f"settings.{key}", value=self.settings[key],
                                   has_value=True)
        model = optimization.settings_model(self.strategy)
        try:
            model(**self.settings)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            allowed = ", ".join(sorted(set(model.model_fields) - _SPEC_SET))
            problem = ("is not a setting" if err["type"] == "extra_forbidden"
                       else err["msg"].split(",")[0].lower())
            raise FieldProblem(f"{problem} of strategy {self.strategy}",
                               f"settings of {self.strategy} are: {allowed}" if allowed else
                               f"{self.strategy} takes no settings: remove optimizer.settings",
                               field=f"settings.{key}", value=err.get("input"),
                               has_value="input" in err) from None
        return self

    @property
    def budget(self) -> int:
        """Total evaluations: ``n_init + batch_size * iterations``."""
        return self.n_init + self.batch_size * self.iterations


class ConstraintSpec(_Frozen):
    """A bound on an objective's natural value (sparsity: an L1 norm; tasks: a score)."""

    objective: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_side(self) -> ConstraintSpec:
        if self.min is None and self.max is None:
            raise FieldProblem("needs a bound", "add min: <value> and/or max: <value>",
                               value=self.objective, has_value=True, field="objective")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise FieldProblem("min is above max: no value satisfies both",
                               "write min <= max (min is a lower bound, max an upper one)",
                               value={"min": self.min, "max": self.max}, has_value=True)
        for side in ("min", "max"):
            bound = getattr(self, side)
            if bound is not None and not math.isfinite(bound):
                raise FieldProblem("must be a finite number", f"write a number, or leave "
                                   f"{side} out", field=side, value=bound, has_value=True)
        return self


class PickSpec(_Frozen):
    """How the final recipe is chosen from the evaluated ones."""

    policy: Literal["primary", "knee", "weighted"] = "primary"
    primary: str | None = None
    """Objective whose best score wins under ``primary`` (default: the first task)."""
    weights: dict[str, float] = Field(default_factory=dict)
    normalize: bool = True
    """``weighted``: min-max normalise each objective over the candidates before weighting
    (objectives on different scales become comparable), or, False, weight the objectives' own
    values (a weighted sum of the scores as they are: equal weights on accuracies pick the
    best average)."""
    use_confirmed: bool = False
    """Choose among the pick and the ``confirm.top_k`` best candidates by their confirmed
    scores (documents the search did not use) instead of their search estimates."""
    constraints: list[ConstraintSpec] = Field(default_factory=list)

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        for key, w in weights.items():
            if not math.isfinite(w) or w < 0:
                raise FieldProblem("must be a finite weight >= 0", "give each objective a "
                                   "weight >= 0 (0 ignores it)", field=key, value=w,
                                   has_value=True)
        if weights and not any(weights.values()):
            raise FieldProblem("are all 0: every trial would tie", "give at least one "
                               "objective a positive weight", value=weights, has_value=True)
        return weights


class BaselineSpec(_Frozen):
    """A fixed recipe reported beside the pick (the paper's fixed-recipe baselines)."""

    name: str | None = None
    method: str | None = None
    """Default: ``merge.method``."""
    weight: float | None = None
    """Every source's weight; default ``1 / number of sources``."""
    density: float | None = Field(default=0.5, gt=0.0, le=1.0)
    """Every source's density, for methods that have one."""
    normalize: bool | None = None
    """Default: ``merge.normalize`` when the method is the searched one, else mergekit's."""

    @field_validator("method")
    @classmethod
    def _check_method(cls, method: str | None) -> str | None:
        return None if method is None else MergeSpec._check_method(method)

    @property
    def label(self) -> str:
        """``name``, or e.g. ``dare_ties w=0.33 d=0.5``."""
        if self.name:
            return self.name
        w = "1/n" if self.weight is None else f"{self.weight:g}"
        return f"{self.method or 'method'} w={w} d={self.density:g}"


class VLLMSpec(_Frozen):
    """How the ``vllm`` evaluation backend gets its engine (one per device slot).

    Either mm-mo starts one engine per slot from the base model, with ``python`` (or
    ``command``) of the engine's own environment (default: the project's ``.venv-vllm``, made
    by ``make setup-vllm``), or it attaches to engines the user already runs (``url``). Checked
    before any work by :func:`mmmo.evaluation.vllm.preflight`.
    """

    python: str | None = None
    """The engine environment's interpreter (default: ``$MMMO_VLLM_PYTHON``, else the
    project's ``.venv-vllm/bin/python``)."""
    command: list[str] | None = None
    """Instead of ``python``: a launcher that runs that interpreter, e.g.
    ``[conda, run, -n, vllm, python]``; ``-m vllm.entrypoints.openai.api_server ...`` follows."""
    url: str | list[str] | None = None
    """An engine already running on this machine (one per slot), e.g.
    ``http://127.0.0.1:8000``, started on the base with ``VLLM_SERVER_DEV_MODE=1``."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """The engine's dtype (default: ``compute.dtype``)."""
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.6, gt=0, le=1)
    """Share of the card the engine takes; the rest holds the per-tensor merge math."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    cpu_kvcache_space_gib: float = Field(default=1.0, gt=0)
    """KV cache of an engine on CPU (``VLLM_CPU_KVCACHE_SPACE``)."""
    num_concurrent: int = Field(default=8, ge=1)
    """Requests one benchmark keeps in flight (the engine batches them)."""
    startup_timeout_seconds: float = Field(default=600.0, gt=0)
    health_timeout_seconds: float = Field(default=10.0, gt=0)
    request_timeout_seconds: float = Field(default=600.0, gt=0)
    shm_dir: str = "/dev/shm"
    """Shared memory where each trial's merged weights pass to the engine (then removed)."""
    extra_args: list[str] = Field(default_factory=list)
    """More engine arguments, passed as they are (e.g. ``[--max-num-seqs, "64"]``)."""

    @model_validator(mode="after")
    def _check_route(self) -> VLLMSpec:
        if self.python is not None and self.command is not None:
            raise FieldProblem("python and command are both set", "keep one of them",
                               field="command", value=self.command, has_value=True)
        if self.command is not None and not self.command:
            raise FieldProblem("is empty", "give the launcher's words, e.g. [conda, run, "
                               "-n, vllm, python], or remove it", field="command",
                               value=self.command, has_value=True)
        if self.url is not None:
            starts = {k: getattr(self, k) for k in ("python", "command", "max_model_len",
                                                   "dtype", "extra_args")
                      if getattr(self, k)}
            if starts:
                key = next(iter(starts))
                raise FieldProblem("starts an engine, but url attaches to a running one",
                                   f"remove {key} (start your engine with those "
                                   "arguments) or remove url", field=key,
                                   value=starts[key], has_value=True)
            urls = [self.url] if isinstance(self.url, str) else self.url
            if not urls:
                raise FieldProblem("is an empty list", "give one URL per device slot",
                                   field="url", value=self.url, has_value=True)
            for u in urls:
                if not re.match(r"^https?://[^/\s]+", u):
                    raise FieldProblem("is not an http(s) URL", "write it like "
                                       "http://127.0.0.1:8000", field="url", value=u,
                                       has_value=True)
        return self

    @property
    def urls(self) -> list[str]:
        """``url`` as a list (empty when mm-mo starts the engines)."""
        if self.url is None:
            return []
        return [self.url] if isinstance(self.url, str) else list(self.url)


class ComputeSpec(_Frozen):
    """Where trials run: device, precision, evaluation batch size, concurrency."""

    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int | Literal["auto"] = 32
    max_concurrent_trials: int = Field(default=1, ge=1)
    """Device slots: trials evaluated at the same time (threads in this process, or Dask
    workers with ``runner: dask``)."""
    runner: Literal["threads", "dask"] = "threads"
    """Where trials run: ``threads`` of this process (one slot per device), or the workers of a
    Dask cluster (one slot per worker, each holding its resident models)."""
    runner_address: str | None = None
    """``runner: dask``: the scheduler to attach to (``tcp://host:8786``); unset, a local cluster
    of ``max_concurrent_trials`` worker processes is started for the run."""
    trust_remote_code: bool = False
    """Let transformers run Python code shipped with the models; off unless a spec sets it."""
    backend: Literal["hf", "vllm"] = "hf"
    """Evaluation backend: ``hf`` (in-process transformers) or ``vllm`` (an engine per slot)."""
    vllm: VLLMSpec | None = None
    """The ``vllm`` backend's engine settings (defaults when omitted)."""

    @model_validator(mode="after")
    def _check_backend(self) -> ComputeSpec:
        if self.vllm is not None and self.backend != "vllm":
            raise FieldProblem("is set but compute.backend is hf", "set compute.backend: "
                               "vllm, or remove compute.vllm", field="vllm",
                               has_value=False)
        urls = self.vllm.urls if self.vllm is not None else []
        if urls and len(urls) < self.max_concurrent_trials:
            raise FieldProblem(f"gives {len(urls)} engine(s) for {self.max_concurrent_trials}"
                               " concurrent trials (one engine serves one trial at a time)",
                               "give one URL per slot, or lower compute.max_concurrent_trials",
                               field="vllm.url", value=self.vllm.url, has_value=True)
        return self

    @property
    def engine(self) -> VLLMSpec:
        """The vLLM settings in force (``vllm`` or the defaults)."""
        return self.vllm if self.vllm is not None else VLLMSpec()

    @field_validator("runner", mode="before")
    @classmethod
    def _check_runner(cls, runner: Any) -> Any:
        if runner == "ray":
            raise FieldProblem("Ray is not supported", "use runner: dask (a Dask cluster: "
                               "`pip install -e .[dask]`, see the README's two-machine recipe)",
                               value=runner, has_value=True)
        return runner

    @model_validator(mode="after")
    def _check_address(self) -> ComputeSpec:
        if self.runner_address is not None and self.runner != "dask":
            raise FieldProblem("is only used with runner: dask", "set runner: dask, or remove "
                               "runner_address", field="runner_address",
                               value=self.runner_address, has_value=True)
        return self

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise FieldProblem("is not a device", "use auto, cpu, cuda, cuda:<index> or mps",
                               value=device, has_value=True)
        return device

    @field_validator("batch_size", mode="before")
    @classmethod
    def _check_batch(cls, size: Any) -> Any:
        if isinstance(size, str) and size != "auto" or isinstance(size, bool):
            raise FieldProblem("is neither a number nor 'auto'", "use a positive batch "
                               "size or 'auto'", value=size, has_value=True)
        if isinstance(size, int) and size < 1:
            raise FieldProblem("must be >= 1", "use a positive batch size or 'auto'",
                               value=size, has_value=True)
        return size


class EvaluationSpec(_Frozen):
    """Retries and time limits of one benchmark evaluation."""

    retries: int = Field(default=2, ge=0, le=20)
    retry_delay_seconds: float | list[float] = Field(default_factory=lambda: [2.0, 10.0])
    timeout_seconds: float | None = Field(default=None, gt=0)

    @field_validator("retry_delay_seconds")
    @classmethod
    def _check_delays(cls, delays: float | list[float]) -> float | list[float]:
        values = delays if isinstance(delays, list) else [delays]
        if not values or any(not math.isfinite(d) or d < 0 for d in values):
            raise FieldProblem("must be seconds >= 0 (a number or a non-empty list)",
                               "write e.g. 10 or [10, 60]", value=delays, has_value=True)
        return delays


class SearchSpec(_Frozen):
    """A whole search: what to merge, what to optimise, where to store it, how to run it."""

    name: str
    description: str = ""
    base: ModelSpec
    sources: list[ModelSpec] = Field(min_length=1)
    merge: MergeSpec = Field(default_factory=MergeSpec)
    objectives: ObjectivesSpec
    heldout: list[TaskSpec] = Field(default_factory=list)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    pick: PickSpec = Field(default_factory=PickSpec)
    baselines: list[BaselineSpec] = Field(default_factory=lambda: [BaselineSpec()])
    """Fixed recipes scored beside the pick in the final table (default: the searched method
    with equal weights 1/n and density 0.5)."""
    storage: str = "./studies"
    """Where studies live: a local folder, file://..., s3://bucket/prefix or any fsspec URL."""
    study: str | None = None
    """Study name (default: ``name``); lowercase letters, digits and dashes."""
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)
    """The final table's scores on documents the search did not use."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise FieldProblem("must be letters, digits, '_', '.', '-'",
                               "rename it, e.g. 'qwen15-7b-mmmo'", value=name, has_value=True)
        return name

    @field_validator("study")
    @classmethod
    def _check_study(cls, study: str | None) -> str | None:
        if study is not None and not _STUDY.match(study):
            raise FieldProblem("must be 1-63 lowercase letters, digits and dashes",
                               "rename it, e.g. 'fixture-demo'", value=study, has_value=True)
        return study

    @field_validator("storage")
    @classmethod
    def _check_storage(cls, url: str) -> str:
        from mmmo.storage import parse_storage

        try:
            parse_storage(url)
        except SpecError as exc:  # malformed: refused here, before anything can be written
            raise FieldProblem(exc.problem, exc.fix, value=url, has_value=True) from None
        return url

    @model_validator(mode="after")
    def _check_cross_fields(self) -> SearchSpec:
        self._check_models()
        self._check_objective_names()
        self._check_pick()
        self._check_baselines()
        self._check_budget()
        return self

    def _check_budget(self) -> None:
        fidelity = self.optimizer.fidelity
        if fidelity is not None and isinstance(fidelity.levels[0], int):
            for i, obj in enumerate(self.objectives.tasks):
                if not isinstance(obj.limit, int):
                    raise FieldProblem("counts need every objective's limit to be a count",
                                       f"give levels as fractions of the limit, or set "
                                       f"objectives.tasks[{i}].limit to a count",
                                       field="optimizer.fidelity.levels",
                                       value=fidelity.levels, has_value=True)
                if fidelity.levels[-1] < obj.limit:
                    raise FieldProblem(f"the last level must be the whole subsample "
                                       f"({obj.limit} documents of {obj.label})",
                                       f"end the levels with {obj.limit}",
                                       field="optimizer.fidelity.levels",
                                       value=fidelity.levels, has_value=True)
        if self.pick.use_confirmed and (not self.confirm.enabled or self.confirm.top_k < 1):
            raise FieldProblem("needs confirmed candidates", "set confirm.enabled: true and "
                               "confirm.top_k >= 1, or remove pick.use_confirmed",
                               field="pick.use_confirmed", value=True, has_value=True)

    def _check_models(self) -> None:
        per_model, _ = method_parameters(self.merge.method)
        labels = [s.label for s in self.sources]
        models = [(s.path, s.revision) for s in self.sources]
        for i, src in enumerate(self.sources):
            if src.path == self.base.path and src.revision == self.base.revision:
                raise FieldProblem("is the base model itself", "list only fine-tuned "
                                   "models of the base's family as sources",
                                   field=f"sources[{i}].path", value=src.path, has_value=True)
            if (src.path, src.revision) in models[:i]:
                raise FieldProblem(f"is the same model as sources[{models.index(models[i])}]",
                                   "list each source model once", field=f"sources[{i}].path",
                                   value=src.path, has_value=True)
            if src.label in labels[:i]:
                raise FieldProblem("two sources share this name", "give each source a "
                                   "distinct name", field=f"sources[{i}].name",
                                   value=src.label, has_value=True)
            for key, bound in src.parameters.items():
                _check_bound(key, bound, per_model, self.merge.method,
                             f"sources[{i}].parameters.{key}")
                _check_read(key, bound, self.merge.method, f"sources[{i}].parameters.{key}")
        if self.base.parameters:
            raise FieldProblem("the base takes no merge parameters", "move them to sources",
                               field="base.parameters", value=self.base.parameters,
                               has_value=True)

    def _check_objective_names(self) -> None:
        seen: set[str] = set()
        if self.objectives.sparsity.enabled:
            seen.add(self.objectives.sparsity.name)
        for i, obj in enumerate(self.objectives.tasks):
            if obj.label in seen:
                raise FieldProblem("two objectives share this name", "set a distinct "
                                   "name: for each objective", field=f"objectives.tasks[{i}]"
                                   ".name", value=obj.label, has_value=True)
            seen.add(obj.label)
        for i, task in enumerate(self.heldout):
            if task.label in seen:
                raise FieldProblem("is already the name of an objective or another held-out "
                                   "task", "set a distinct name: (the final table has one "
                                   "column per name)", field=f"heldout[{i}].name",
                                   value=task.label, has_value=True)
            seen.add(task.label)

    def _check_pick(self) -> None:
        names = self.objective_names()
        task_names = [o.label for o in self.objectives.tasks]
        if self.pick.primary is not None and self.pick.primary not in names:
            raise FieldProblem("is not an objective", f"use one of {names}",
                               field="pick.primary", value=self.pick.primary, has_value=True)
        for key in self.pick.weights:
            if key not in names:
                raise FieldProblem("is not an objective", f"use one of {names}",
                                   field=f"pick.weights.{key}", value=key, has_value=True)
        if self.pick.policy == "weighted" and not self.pick.weights:
            raise FieldProblem("policy 'weighted' needs weights", "add pick.weights: "
                               f"{{{task_names[0]}: 1.0, ...}}", field="pick.weights",
                               value={}, has_value=True)
        for i, con in enumerate(self.pick.constraints):
            if con.objective not in names:
                raise FieldProblem("is not an objective", f"use one of {names}",
                                   field=f"pick.constraints[{i}].objective",
                                   value=con.objective, has_value=True)

    def _check_baselines(self) -> None:
        n = len(self.sources)
        rows = {self.base.label, *(s.label for s in self.sources)}
        for i, b in enumerate(self.baselines):
            where = f"baselines[{i}]"
            method = b.method or self.merge.method
            per_model, shared = method_parameters(method)
            given = b.model_fields_set
            reads_density = "density" in per_model and "density" not in _inert(method)
            if "density" in given and b.density is not None and not reads_density:
                raise FieldProblem(f"{method} has no density", "remove density from this "
                                   "baseline (or choose a method that sparsifies, e.g. "
                                   "dare_ties)", field=f"{where}.density", value=b.density,
                                   has_value=True)
            if b.normalize is not None and "normalize" not in shared:
                raise FieldProblem(f"{method} has no normalize option", "remove normalize "
                                   "from this baseline", field=f"{where}.normalize",
                                   value=b.normalize, has_value=True)
            weight = 1.0 / n if b.weight is None else b.weight
            lo, hi = ADMISSIBLE["weight"]
            if not math.isfinite(weight) or not lo <= weight <= hi:
                raise FieldProblem("is outside the range mergekit accepts for weight",
                                   f"keep it within [{lo}, {hi}]", field=f"{where}.weight",
                                   value=b.weight, has_value=True)
            if weight <= 0:
                raise FieldProblem(f"every source weighs {weight:g}: the merge is the base "
                                   "model itself, or moves away from every source",
                                   f"use a positive weight, e.g. {1 / n:.3g} (= 1/{n})",
                                   field=f"{where}.weight", value=b.weight, has_value=True)
            normalize = b.normalize
            if normalize is None:
                normalize = (self.merge.normalize if method == self.merge.method else None)
                normalize = shared.get("normalize") if normalize is None else normalize
            if method == "linear" and normalize is False and abs(n * weight - 1) > 0.01:
                raise FieldProblem(f"the {n} weights sum to {n * weight:g}: linear without "
                                   "normalize scales the whole model by that sum",
                                   f"use weight {1 / n:.3g} (= 1/{n}), or normalize: true",
                                   field=f"{where}.weight", value=b.weight, has_value=True)
            if method.startswith("della") and reads_density and b.density is not None:
                eps = per_model.get("epsilon") or 0.0
                from mmmo.merging.recipe import della_valid

                if not della_valid(b.density, eps):
                    raise FieldProblem(f"{method} needs density +/- epsilon ({eps:g}) in "
                                       "(0, 1)", f"use a density in ({eps:g}, {1 - eps:g})",
                                       field=f"{where}.density", value=b.density,
                                       has_value=True)
            label = b.label.replace("method", method)
            if label in rows or label.startswith("pick"):
                raise FieldProblem("is already the name of a model or another baseline",
                                   "give each baseline a distinct name: (the final table has "
                                   "one row per name)", field=f"{where}.name", value=label,
                                   has_value=True)
            rows.add(label)

    def objective_names(self) -> list[str]:
        """Objective names in vector order: the tasks, then sparsity when enabled."""
        names = [o.label for o in self.objectives.tasks]
        if self.objectives.sparsity.enabled:
            names.append(self.objectives.sparsity.name)
        return names

    def task(self, name: str) -> TaskSpec:
        """The objective or held-out task called ``name``.

        Raises:
            KeyError: no task has that name.
        """
        for task in [*self.objectives.tasks, *self.heldout]:
            if task.label == name:
                return task
        raise KeyError(f"no objective or held-out task named {name!r}")

    @property
    def study_name(self) -> str:
        """The study's name: ``study`` or a slug of ``name``."""
        return self.study or re.sub(r"[^a-z0-9-]+", "-", self.name.lower()).strip("-")[:63]

    def with_overrides(self, **changes: Any) -> SearchSpec:
        """A copy with top-level fields replaced (e.g. ``storage=``, ``study=``), re-validated."""
        data = self.model_dump(mode="json")
        data.update({k: v for k, v in changes.items() if v is not None})
        return parse_spec(data, source="override")

    def to_yaml(self) -> str:
        """The spec as YAML, every default written out (what a study stores)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------- loading


def load_spec(path_or_url: str | Path) -> SearchSpec:
    """Read and validate a spec from a local path or any fsspec URL (s3://, file://, ...).

    Raises:
        SpecError: one line naming the field, the bad value and the fix.
    """
    ref = str(path_or_url)
    try:
        with fsspec.open(ref, "r", encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise SpecError("spec", "file not found", value=ref,
                        fix="check the path or URL of the spec YAML") from None
    except IsADirectoryError:
        raise SpecError("spec", "is a folder, not a YAML file", value=ref,
                        fix="give the path of the spec's YAML file") from None
    except (OSError, ValueError) as exc:
        raise SpecError("spec", f"cannot be read: {exc}".splitlines()[0], value=ref,
                        fix="check the URL and its credentials") from None
    from mmmo import yamlio

    try:
        data = yamlio.load(text, source=ref)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError("spec", f"is not valid YAML{where}", has_value=False, source=ref,
                        fix="fix the YAML syntax there") from None
    base_dir = Path(ref).expanduser().resolve().parent if "://" not in ref else None
    if ref.startswith("file://"):
        base_dir = Path(ref[len("file://"):]).expanduser().resolve().parent
    data = _default_name(data, ref)
    return parse_spec(data, source=ref, base_dir=base_dir)


def _default_name(data: Any, ref: str) -> Any:
    if isinstance(data, dict) and "name" not in data:
        stem = Path(ref.split("://")[-1]).stem
        return {"name": stem, **data}
    return data


def parse_spec(data: Any, *, source: str | None = None,
               base_dir: Path | None = None) -> SearchSpec:
    """Validate a spec given as a mapping; errors become one-line :class:`SpecError`."""
    if data is None:
        raise SpecError("spec", "is empty", has_value=False, source=source,
                        fix="write the spec's fields (start from examples/fixture.yaml)")
    if not isinstance(data, dict):
        raise SpecError("spec", "must be a YAML mapping of fields", value=type(data).__name__,
                        fix="start from examples/fixture.yaml", source=source)
    try:
        return SearchSpec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise _one_line(exc, source) from None


def _one_line(exc: ValidationError, source: str | None) -> SpecError:
    """The first validation error of ``exc`` as a SpecError with a fix."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    problem = err.get("ctx", {}).get("error")
    if isinstance(problem, FieldProblem):
        if problem.field:
            loc += problem.field.split(".")
        return SpecError(_loc(loc), problem.problem, value=problem.value,
                         has_value=problem.has_value, fix=problem.fix, source=source)
    kind = err["type"]
    field = _loc(loc)
    if kind == "missing":
        return SpecError(field, "is required", has_value=False, source=source,
                         fix=f"add '{loc[-1]}' (see examples/fixture.yaml)")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else "remove it; "
        return SpecError(field, "is not a known field", has_value=False, source=source,
                         fix=f"{hint}allowed here: {', '.join(allowed)}")
    problem, fix = _phrase(kind, err.get("ctx") or {}, err["msg"])
    return SpecError(field, problem, value=err.get("input"), has_value="input" in err,
                     fix=fix, source=source)


_TYPE_FIX = {
    "int": "write a whole number, e.g. 10",
    "float": "write a number, e.g. 0.5",
    "bool": "write true or false",
    "string": "write a string (quote it in YAML)",
    "dict": "write a mapping of key: value",
    "model": "write a mapping of key: value",
    "list": "write a list, e.g. [a, b]",
    "tuple": "write a list [low, high]",
}
_BOUND = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
          "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}


def _phrase(kind: str, ctx: dict[str, Any], msg: str) -> tuple[str, str]:
    """(problem, fix) for one of pydantic's built-in error types."""
    if kind in _BOUND:
        op, key = _BOUND[kind]
        limit = ctx.get(key)
        return f"must be {op} {limit}", f"set a value {op} {limit}"
    if kind == "literal_error":
        return "is not an allowed value", "use " + str(ctx.get("expected", "an allowed value"))
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return f"needs at least {n} item(s)", f"list at least {n}"
    for prefix, fix in _TYPE_FIX.items():
        if kind.startswith(prefix + "_") or kind == prefix + "_type":
            return "has the wrong type", fix
    return msg.split(",")[0].rstrip(".").lower(), "see examples/fixture.yaml for this field"


def _loc(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in ("float", "tuple[float, float]", "int", "constrained-int"):
            continue  # pydantic's union-branch labels add nothing for the user
        else:
            out += f".{part}" if out else str(part)
    return out or "spec"


def _allowed_keys(loc: list[Any]) -> list[str]:
    """Field names of the spec model at ``loc`` (for 'did you mean' hints)."""
    model: Any = SearchSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _inner_model(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None

"""A recipe: one fully specified mergekit merge, identified by a stable hash.

A :class:`Recipe` names the method, the base and source models (with fingerprints), each
source's parameter values (a number, or a per-layer gradient list), the method's shared
settings (all written out), the seed and the dtype. It converts to mergekit's own
``MergeConfiguration`` / YAML, so anything mm-mo merges, ``mergekit-yaml`` can reproduce.

:attr:`Recipe.recipe_id` is the cache key everywhere (trials, evaluations, exports). It is the
first 16 hex characters of SHA-256 over this canonical JSON (keys sorted, no spaces)::

    {"v": 1, "method": ..., "dtype": ..., "base": <base fingerprint>,
     "sources": [[<fingerprint>, {param: value or [values]}], ...],   # in source order
     "settings": {shared setting: value},                              # every shared setting
     "seed": <random_seed> or null}                                    # null: deterministic method

Values enter as stored (the search space rounds them before a recipe exists; ``-0.0`` is
written as ``0.0``). Labels, refs and paths do not enter: the same files under another name or
path are the same merge. Source order does (it is mergekit's model order, which fixes the
order of DARE/DELLA's random draws), and so does the seed, but only for the random methods.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from mmmo.merging.models import is_hub_id, model_fingerprint, resolve_local

__all__ = [
    "ModelEntry",
    "ParamValue",
    "Recipe",
    "della_valid",
    "inert_parameters",
    "is_random_method",
]

ParamValue = float | tuple[float, ...]
"""A per-source parameter: one value, or a gradient (k knots interpolated over the layers)."""

Dtype = Literal["float32", "bfloat16", "float16"]


def _method(name: str) -> Any:
    from mergekit.merge_methods import get

    return get(name)


def is_random_method(method: str) -> bool:
    """True for methods whose sparsification draws random masks (DARE, DELLA)."""
    from mergekit.sparsify import SparsificationMethod

    kind = getattr(_method(method), "sparsification_method", None)
    return kind in (SparsificationMethod.random, SparsificationMethod.della_magprune)


def inert_parameters(method: str) -> frozenset[str]:
    """Per-model parameters mergekit declares for ``method`` but never reads.

    mergekit declares ``density`` for every task-arithmetic method; without sparsification
    (``task_arithmetic``) it is ignored, so it is not worth a search dimension.
    """
    obj = _method(method)
    if hasattr(obj, "sparsification_method") and obj.sparsification_method is None:
        return frozenset({"density"})
    return frozenset()


def della_valid(density: float, epsilon: float) -> bool:
    """mergekit's DELLA accepts ``density`` with ``epsilon`` (density >= 1 or <= 0 skip the check)."""
    if density >= 1 or density <= 0:
        return True
    return density - epsilon > 0 and density + epsilon < 1 and epsilon >= 0


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Frozen):
    """A model of a recipe: its ref as the spec wrote it, a label, and its fingerprint."""

    ref: str
    label: str
    revision: str | None = None
    fingerprint: str

    @classmethod
    def from_ref(cls, ref: str, *, label: str | None = None,
                 revision: str | None = None) -> ModelEntry:
        """Fingerprint ``ref`` (see :func:`~mmmo.merging.models.model_fingerprint`)."""
        ref = str(ref)
        label = label or ref.rstrip("/").split("/")[-1].split(":")[-1]
        return cls(ref=ref, label=label, revision=revision,
                   fingerprint=model_fingerprint(ref, revision=revision))

    @classmethod
    def from_spec(cls, model: Any) -> ModelEntry:
        """From a :class:`~mmmo.spec.ModelSpec` (``path``, ``label``, ``revision``)."""
        return cls.from_ref(model.path, label=model.label, revision=model.revision)

    @property
    def path(self) -> str:
        """Alias of ``ref`` (so a ModelEntry reads like a ModelSpec)."""
        return self.ref

    def mergekit_ref(self, local: str | Path | None = None) -> str:
        """How mergekit should name this model: a local path, or ``hub_id@revision``."""
        if local is not None:
            return str(local)
        if is_hub_id(self.ref):
            return f"{self.ref}@{self.revision}" if self.revision else self.ref
        return str(resolve_local(self.ref, self.revision))


def _canon(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value) + 0.0
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return value


def _round(value: ParamValue, decimals: int | None) -> ParamValue:
    if decimals is None:
        return value
    if isinstance(value, tuple):
        return tuple(round(float(v), decimals) + 0.0 for v in value)
    return round(float(value), decimals) + 0.0


class Recipe(_Frozen):
    """One merge, fully specified. Build with :meth:`build` or :meth:`SearchSpace.decode`.

    Attributes:
        method: A method of mergekit's task-arithmetic family.
        base: The base model (every task vector is relative to it; also the tokenizer/config
            donor and the reference of the sparsity objective).
        sources: The merged models, in mergekit's model order.
        parameters: ``{source label: {parameter: value or gradient tuple}}``.
        settings: Every shared setting of the method (``normalize``, ``int8_mask``,
            ``rescale``, ``lambda``, ...); missing ones are filled with mergekit's defaults.
        random_seed: Seed of DARE/DELLA's masks (mergekit-yaml's ``--random-seed``).
        dtype: mergekit's ``dtype``: tensors are merged and stored in it.
    """

    method: str
    base: ModelEntry
    sources: tuple[ModelEntry, ...]
    parameters: dict[str, dict[str, ParamValue]]
    settings: dict[str, bool | float]
    random_seed: int = 0
    dtype: Dtype = "float32"

    @model_validator(mode="before")
    @classmethod
    def _fill_settings(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "method" not in data:
            return data
        from mmmo.spec import TASK_ARITHMETIC_METHODS, method_parameters

        if data["method"] not in TASK_ARITHMETIC_METHODS:
            raise ValueError(f"method {data['method']!r} is not one of "
                             f"{', '.join(TASK_ARITHMETIC_METHODS)}")
        _, shared = method_parameters(data["method"])
        settings = dict(data.get("settings") or {})
        unknown = sorted(set(settings) - set(shared))
        if unknown:
            raise ValueError(f"settings {unknown} are not shared parameters of "
                             f"{data['method']} (known: {sorted(shared)})")
        specs = {p.name: p for p in _method(data["method"]).spec.parameters}
        filled = {k: specs[k].validate(settings.get(k, default)) for k, default in shared.items()}
        return {**data, "settings": filled}

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        from mmmo.spec import method_parameters

        labels = [s.label for s in self.sources]
        if not self.sources:
            raise ValueError("a recipe needs at least one source")
        if len(set(labels)) != len(labels):
            raise ValueError(f"source labels must be distinct (got {labels})")
        if set(self.parameters) != set(labels):
            raise ValueError(f"parameters must have one entry per source {labels} "
                             f"(got {sorted(self.parameters)})")
        per_model, _ = method_parameters(self.method)
        for label, values in self.parameters.items():
            unknown = sorted(set(values) - set(per_model))
            if unknown:
                raise ValueError(f"{label}: {unknown} are not per-model parameters of "
                                 f"{self.method} (known: {list(per_model)})")
            missing = [k for k, d in per_model.items() if d is None and k not in values]
            if missing:
                raise ValueError(f"{label}: required parameter(s) {missing} missing")
            for key, value in values.items():
                if isinstance(value, tuple) and not value:
                    raise ValueError(f"{label}.{key}: a gradient needs at least one value")
            if self.method.startswith("della"):
                self._check_della(label, values, per_model)
        return self

    @staticmethod
    def _check_della(label: str, values: Mapping[str, ParamValue],
                     defaults: Mapping[str, Any]) -> None:
        density = values.get("density", defaults["density"])
        epsilon = values.get("epsilon", defaults["epsilon"])
        n = max(len(v) if isinstance(v, tuple) else 1 for v in (density, epsilon))
        for i in range(n):
            d = density[min(i, len(density) - 1)] if isinstance(density, tuple) else density
            e = epsilon[min(i, len(epsilon) - 1)] if isinstance(epsilon, tuple) else epsilon
            if not della_valid(d, e):
                raise ValueError(f"{label}: della needs density +/- epsilon in (0, 1) "
                                 f"(density {d}, epsilon {e})")

    # ------------------------------------------------------------------ identity

    @property
    def recipe_id(self) -> str:
        """16 hex characters identifying this merge (see the module docstring).

        Computed on each access (microseconds), so copies made with ``model_copy(update=...)``
        never carry a stale id.
        """
        payload = {
            "v": 1,
            "method": self.method,
            "dtype": self.dtype,
            "base": self.base.fingerprint,
            "sources": [[s.fingerprint, {k: _canon(v) for k, v in
                                         sorted(self.parameters[s.label].items())}]
                        for s in self.sources],
            "settings": {k: _canon(v) for k, v in sorted(self.settings.items())},
            "seed": self.random_seed if is_random_method(self.method) else None,
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def params_table(self) -> dict[str, float]:
        """Flat ``{"<label>.<param>": value}``; gradient knots as ``"<label>.<param>@<k>"``."""
        out: dict[str, float] = {}
        for src in self.sources:
            for key, value in self.parameters[src.label].items():
                if isinstance(value, tuple):
                    out.update({f"{src.label}.{key}@{i}": v for i, v in enumerate(value)})
                else:
                    out[f"{src.label}.{key}"] = value
        return out

    # ------------------------------------------------------------------ mergekit

    def to_mergekit_config(self, *, paths: Mapping[str, str | Path] | None = None) -> Any:
        """This recipe as a ``mergekit.config.MergeConfiguration``.

        Args:
            paths: Optional ``{ref: local folder}`` overrides; other refs resolve themselves
                (``fixture:`` and local refs to absolute paths, hub ids to ``id@revision``).

        ``linear`` gets no ``base_model``: mergekit's linear ignores a base, and with one it
        would demand a weight for it. Every other method merges task vectors against the base.
        """
        from mergekit.config import MergeConfiguration

        paths = paths or {}

        def ref(model: ModelEntry) -> str:
            return model.mergekit_ref(paths.get(model.ref))

        models = []
        for src in self.sources:
            params = {k: (list(v) if isinstance(v, tuple) else v)
                      for k, v in self.parameters[src.label].items()}
            models.append({"model": ref(src), "parameters": params})
        data: dict[str, Any] = {
            "merge_method": self.method,
            "models": models,
            "parameters": dict(self.settings),
            "dtype": self.dtype,
        }
        if self.method != "linear":
            data["base_model"] = ref(self.base)
        return MergeConfiguration.model_validate(data)

    def to_yaml(self, *, paths: Mapping[str, str | Path] | None = None) -> str:
        """A YAML ``mergekit-yaml`` accepts as-is (local models as absolute paths)."""
        header = f"# mm-mo recipe {self.recipe_id}: {self.method} over " + ", ".join(
            s.label for s in self.sources) + f"; run with --random-seed {self.random_seed}\n"
        return header + self.to_mergekit_config(paths=paths).to_yaml() + "\n"

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, *, method: str, base: ModelEntry | Any | str,
              sources: Sequence[ModelEntry | Any | str],
              parameters: Mapping[str, ParamValue | Sequence[float]] | None = None,
              per_source: Mapping[str, Mapping[str, ParamValue | Sequence[float]]] | None = None,
              settings: Mapping[str, bool | float] | None = None, random_seed: int = 0,
              dtype: Dtype = "float32", rounding: int | None = None) -> Recipe:
        """A recipe from explicit values (fixed-recipe baselines, tests, hand-made merges).

        Args:
            method: The merge method.
            base: A :class:`ModelEntry`, a ModelSpec, or a ref string (fingerprinted here).
            sources: Same, one per merged model.
            parameters: Values shared by every source, e.g. ``{"weight": 1/3, "density": 0.5}``.
            per_source: ``{label: {param: value}}`` overriding ``parameters`` per source.
            settings: Shared settings (``normalize``, ``int8_mask``, ``rescale``, ``lambda``).
            random_seed: Seed of the random methods.
            dtype: Merge/storage dtype.
            rounding: Round every value to this many decimals (None keeps exact values).

        Example:
            ``Recipe.build(method="dare_ties", base=b, sources=[s1, s2, s3],
            parameters={"weight": 1/3, "density": 0.5}, settings={"normalize": False})``
        """
        base_entry = _entry(base)
        entries = tuple(_entry(s) for s in sources)
        values: dict[str, dict[str, ParamValue]] = {}
        for src in entries:
            merged = {**(parameters or {}), **((per_source or {}).get(src.label) or {})}
            values[src.label] = {k: _round(_as_value(v), rounding) for k, v in merged.items()}
        unknown = set(per_source or {}) - {s.label for s in entries}
        if unknown:
            raise ValueError(f"per_source names unknown sources {sorted(unknown)}")
        return cls(method=method, base=base_entry, sources=entries, parameters=values,
                   settings=dict(settings or {}), random_seed=random_seed, dtype=dtype)


def _as_value(value: Any) -> ParamValue:
    if isinstance(value, list | tuple):
        return tuple(float(v) for v in value)
    return float(value)


def _entry(model: ModelEntry | Any | str) -> ModelEntry:
    if isinstance(model, ModelEntry):
        return model
    if isinstance(model, str | Path):
        return ModelEntry.from_ref(str(model))
    return ModelEntry.from_spec(model)

"""The search space: x in [0, 1]^d <-> a :class:`~mmmo.merging.recipe.Recipe`.

One dimension per (source, searched parameter, layer group), in this order: sources as the
spec lists them, parameters in mergekit's declaration order (``weight``, ``density``, then
``gamma`` or ``epsilon``), groups 0..k-1. Names read ``"<label>.<param>"`` (one layer group)
or ``"<label>.<param>@<g>"`` (``merge.layer_groups = k > 1``: the k values are the knots of a
mergekit gradient list, interpolated over the decoder layers; embeddings and the final norm
take knot 0, as mergekit does).

A parameter is searched when its bound is an interval; a single number (in ``merge.parameters``
or a source's ``parameters``) fixes it and takes no dimension. ``density`` of
``task_arithmetic`` (declared by mergekit, never read) is not searched unless a bound is given.

Decoding: ``v = low + x * (high - low)``, rounded to ``merge.rounding`` decimals, then clamped
into ``[low, high]`` (so an off-grid bound such as 0.001 stays reachable exactly). The rounded
values identify the recipe; :meth:`SearchSpace.round_x` returns the canonical x of x's recipe
(``encode(decode(x))``), so the optimizer can de-duplicate in x-space.

DELLA needs ``density - epsilon > 0`` and ``density + epsilon < 1`` (density in (0, 1)).
Its epsilon dimension is a *fraction of the room density leaves*: with ``u = 10**-rounding``,
``room(d) = the largest multiple of u strictly below min(d, 1 - d)`` (0 when d is 0 or 1), and

    epsilon = round(lo' + x_eps * (hi' - lo')),  hi' = min(eps_high, room(d)),
                                                  lo' = min(eps_low, hi')

so every x decodes to a valid recipe, at every gradient knot (a straight line between valid
knots stays valid, which covers mergekit's interpolation between knots). When the bounds leave
no room, epsilon shrinks below its own lower bound rather than producing an invalid merge.
With epsilon fixed, density's interval shrinks to the grid points in (epsilon, 1 - epsilon).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmmo.errors import SpecError, StudyError
from mmmo.merging.recipe import (
    ModelEntry,
    ParamValue,
    Recipe,
    della_valid,
    inert_parameters,
)

__all__ = ["Dimension", "SearchSpace"]


@dataclass(frozen=True)
class Dimension:
    """One coordinate of x: a source's parameter (at one layer-group knot) and its bounds."""

    name: str
    source: str
    parameter: str
    group: int | None
    low: float
    high: float


class SearchSpace:
    """Maps x in [0, 1]^d to recipes of one method over one base and its sources.

    Build it with :meth:`from_spec`; the constructor takes the resolved pieces.

    Args:
        method: The merge method.
        base: The base model entry.
        sources: Source model entries (labels distinct).
        bounds: ``{label: {param: (low, high) or fixed value}}`` for every parameter the
            recipe carries (searched or fixed).
        settings: The method's shared settings written into every recipe.
        random_seed: Seed of every recipe.
        dtype: Merge dtype of every recipe.
        layer_groups: Gradient knots per searched parameter (1: one value per source).
        rounding: Decimals of every searched value.
    """

    def __init__(self, *, method: str, base: ModelEntry, sources: Sequence[ModelEntry],
                 bounds: Mapping[str, Mapping[str, float | tuple[float, float]]],
                 settings: Mapping[str, Any] | None = None, random_seed: int = 0,
                 dtype: str = "float32", layer_groups: int = 1, rounding: int = 2) -> None:
        self.method = method
        self.base = base
        self.sources = tuple(sources)
        self.settings = dict(settings or {})
        self.random_seed = random_seed
        self.dtype = dtype
        self.layer_groups = layer_groups
        self._rounding = rounding
        self._unit = 10.0 ** -rounding
        self._fixed: dict[str, dict[str, float]] = {}
        self._bounds: dict[str, dict[str, tuple[float, float]]] = {}
        for src in self.sources:
            fixed, searched = {}, {}
            for key, bound in bounds[src.label].items():
                low, high = (bound, bound) if isinstance(bound, int | float) else bound
                if low == high:
                    fixed[key] = float(low)
                else:
                    searched[key] = (float(low), float(high))
            self._fixed[src.label], self._bounds[src.label] = fixed, searched
        self._della = method.startswith("della")
        if self._della:
            self._shrink_della_density()
        self.dimensions: tuple[Dimension, ...] = tuple(self._dimensions())
        self._index = {d.name: i for i, d in enumerate(self.dimensions)}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_spec(cls, spec: Any, *, entries: Sequence[ModelEntry] | None = None) -> SearchSpace:
        """The space a :class:`~mmmo.spec.SearchSpec` describes.

        Args:
            spec: The search spec.
            entries: Already fingerprinted ``[base, *sources]`` (default: fingerprint here,
                which reads configs and ~1 MiB per weight file; no weights are loaded).
        """
        if entries is None:
            entries = [ModelEntry.from_spec(m) for m in (spec.base, *spec.sources)]
        base, *sources = entries
        merge = spec.merge
        params = [p for p in merge.searched_parameters()
                  if p not in inert_parameters(merge.method) or p in merge.parameters
                  or any(p in s.parameters for s in spec.sources)]
        bounds = {
            entry.label: {p: model.parameters.get(p, merge.default_bound(p)) for p in params}
            for entry, model in zip(sources, spec.sources, strict=True)
        }
        return cls(method=merge.method, base=base, sources=sources, bounds=bounds,
                   settings=merge.fixed_settings(), random_seed=merge.random_seed,
                   dtype=spec.compute.dtype, layer_groups=merge.layer_groups,
                   rounding=merge.rounding)

    def _shrink_della_density(self) -> None:
        for i, src in enumerate(self.sources):
            fixed, searched = self._fixed[src.label], self._bounds[src.label]
            eps = fixed.get("epsilon")
            where = f"sources[{i}].parameters"
            if "density" in fixed and eps is not None:
                if not della_valid(fixed["density"], eps):
                    raise SpecError(where, f"{self.method} needs density +/- epsilon in (0, 1) "
                                    f"(source '{src.label}': fixed density {fixed['density']}, "
                                    f"epsilon {eps})", fix="lower epsilon or move density "
                                    "away from 0 and 1 (here or in merge.parameters)")
            elif "density" in searched and eps is not None and eps > 0:
                low, high = searched["density"]
                grid_low = (math.floor(eps / self._unit + 1e-9) + 1) * self._unit
                grid_high = (math.ceil((1 - eps) / self._unit - 1e-9) - 1) * self._unit
                low, high = max(low, grid_low), min(high, grid_high)
                if low > high:
                    raise SpecError(where, f"no density in source '{src.label}''s bounds "
                                    f"satisfies {self.method}'s density +/- {eps} in (0, 1)",
                                    fix="lower epsilon or widen density's bounds (here or in "
                                    "merge.parameters)")
                if low == high:
                    del searched["density"]
                    fixed["density"] = round(low, self._rounding)
                else:
                    searched["density"] = (low, high)

    def _dimensions(self) -> list[Dimension]:
        dims = []
        k = self.layer_groups
        for src in self.sources:
            for key, (low, high) in self._bounds[src.label].items():
                for g in range(k):
                    name = f"{src.label}.{key}" + (f"@{g}" if k > 1 else "")
                    dims.append(Dimension(name, src.label, key, g if k > 1 else None, low, high))
        return dims

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        """Number of dimensions d."""
        return len(self.dimensions)

    @property
    def names(self) -> list[str]:
        """One label per dimension, e.g. ``"dbl.weight"`` or ``"dbl.weight@1"``."""
        return [d.name for d in self.dimensions]

    @property
    def rounding(self) -> int:
        """Decimals every searched value is rounded to."""
        return self._rounding

    @property
    def bounds(self) -> np.ndarray:
        """``(2, d)`` lower/upper values of each dimension.

        Density is after della's shrinking (fixed epsilon); epsilon's is the nominal bound,
        the room density leaves applies on top (see the module docstring).
        """
        return np.array([[d.low for d in self.dimensions], [d.high for d in self.dimensions]])

    @property
    def fixed(self) -> dict[str, dict[str, float]]:
        """Per-source values that are not searched."""
        return {k: dict(v) for k, v in self._fixed.items()}

    # ------------------------------------------------------------------ x <-> recipe

    def _value(self, x: float, low: float, high: float) -> float:
        value = round(low + float(x) * (high - low), self._rounding) + 0.0
        return min(max(value, low), high)

    def _room(self, density: float) -> float:
        """Largest grid value strictly below min(d, 1 - d); 0 at d <= 0 or d >= 1."""
        margin = min(density, 1.0 - density)
        if margin <= 0:
            return 0.0
        return max(0.0, (math.ceil(margin / self._unit - 1e-9) - 1) * self._unit)

    def _eps_range(self, label: str, density: float) -> tuple[float, float]:
        low, high = self._bounds[label]["epsilon"]
        high = min(high, round(self._room(density), self._rounding))
        return min(low, high), high

    def decode(self, x: Sequence[float]) -> Recipe:
        """The recipe of x (x in [0, 1]^d; values outside are clipped)."""
        x = np.clip(np.asarray(x, dtype=float).reshape(-1), 0.0, 1.0)
        if x.shape[0] != self.dim:
            raise ValueError(f"x has {x.shape[0]} values, the space has {self.dim} dimensions")
        k = self.layer_groups
        values: dict[str, dict[str, ParamValue]] = {}
        for src in self.sources:
            label = src.label
            out: dict[str, Any] = dict(self._fixed[label])
            for key, (low, high) in self._bounds[label].items():
                if key == "epsilon" and self._della:
                    continue
                knots = [self._value(x[self._index[self._name(label, key, g)]], low, high)
                         for g in range(k)]
                out[key] = tuple(knots) if k > 1 else knots[0]
            if self._della and "epsilon" in self._bounds[label]:
                out["epsilon"] = self._decode_epsilon(label, out, x)
            values[label] = out
        return self._recipe(values)

    def _decode_epsilon(self, label: str, out: Mapping[str, Any], x: np.ndarray) -> ParamValue:
        k = self.layer_groups
        knots = []
        for g in range(k):
            density = self._knot(out.get("density", 1.0), g)
            low, high = self._eps_range(label, density)
            knots.append(self._value(x[self._index[self._name(label, "epsilon", g)]], low, high))
        return tuple(knots) if k > 1 else knots[0]

    @staticmethod
    def _knot(value: ParamValue, g: int) -> float:
        return value[g] if isinstance(value, tuple) else value

    def _name(self, label: str, key: str, g: int) -> str:
        return f"{label}.{key}" + (f"@{g}" if self.layer_groups > 1 else "")

    def encode(self, recipe: Recipe) -> np.ndarray:
        """The canonical x of ``recipe`` (its values mapped back into [0, 1]^d)."""
        x = np.zeros(self.dim)
        for dim_i, d in enumerate(self.dimensions):
            value = self._knot(recipe.parameters[d.source][d.parameter], d.group or 0)
            low, high = d.low, d.high
            if d.parameter == "epsilon" and self._della:
                density = self._knot(recipe.parameters[d.source].get("density", 1.0),
                                     d.group or 0)
                low, high = self._eps_range(d.source, density)
            x[dim_i] = 0.0 if high == low else (value - low) / (high - low)
        return np.clip(x, 0.0, 1.0)

    def round_x(self, x: Sequence[float]) -> np.ndarray:
        """The x that decodes to the same recipe as ``x``, identical for all x of one recipe."""
        return self.encode(self.decode(x))

    # ------------------------------------------------------------------ recipes

    def _recipe(self, values: dict[str, dict[str, ParamValue]], method: str | None = None,
                settings: Mapping[str, Any] | None = None) -> Recipe:
        return Recipe(method=method or self.method, base=self.base, sources=self.sources,
                      parameters=values,
                      settings=dict(self.settings if settings is None else settings),
                      random_seed=self.random_seed, dtype=self.dtype)

    def baseline(self, *, parameters: Mapping[str, ParamValue | Sequence[float]],
                 method: str | None = None, settings: Mapping[str, Any] | None = None,
                 per_source: Mapping[str, Mapping[str, Any]] | None = None) -> Recipe:
        """A fixed recipe over this space's models, seed and dtype (e.g. a paper baseline).

        Values are used exactly (not rounded). ``settings`` default to the space's own when
        ``method`` is the space's method, else to mergekit's defaults for ``method``.

        Example:
            ``space.baseline(method="dare_ties", parameters={"weight": 1/3, "density": 0.5})``
        """
        method = method or self.method
        if settings is None and method == self.method:
            settings = self.settings
        return Recipe.build(method=method, base=self.base, sources=self.sources,
                            parameters=parameters, per_source=per_source,
                            settings=settings, random_seed=self.random_seed,
                            dtype=self.dtype)  # type: ignore[arg-type]

    def fixed_recipe(self, *, method: str | None = None, weight: float | None = None,
                     density: float | None = 0.5, normalize: bool | None = None) -> Recipe:
        """An equal-weights baseline: every source gets ``weight`` (default ``1/n``).

        ``density`` applies when the method reads one (not ``linear``/``task_arithmetic``);
        ``normalize`` None keeps the space's setting for its own method, else mergekit's
        default. Other parameters (gamma, epsilon) take mergekit's defaults.
        """
        from mmmo.spec import method_parameters

        method = method or self.method
        per_model, _ = method_parameters(method)
        values: dict[str, Any] = {"weight": 1.0 / len(self.sources) if weight is None
                                  else weight}
        if density is not None and "density" in per_model \
                and "density" not in inert_parameters(method):
            values["density"] = density
        settings = dict(self.settings) if method == self.method else {}
        if normalize is not None:
            settings["normalize"] = normalize
        return self.baseline(method=method, parameters=values, settings=settings)

    def recipe(self, data: Recipe | Mapping[str, Any]) -> Recipe:
        """A recipe from its JSON form (``model_dump(mode="json")``, as trials store it).

        A ``recipe_id`` key, if present, must match the recipe's (else StudyError).
        """
        if isinstance(data, Recipe):
            return data
        payload = dict(data)
        claimed = payload.pop("recipe_id", None)
        recipe = Recipe.model_validate(payload)
        if claimed is not None and claimed != recipe.recipe_id:
            raise StudyError("recipe_id", f"stored {claimed} does not match the recipe's "
                             f"content ({recipe.recipe_id}): the recipe format or a model "
                             "changed", fix="start a new study (--study NAME) for these models")
        return recipe

    @property
    def fingerprints(self) -> list[str]:
        """Fingerprints of the base and the sources, in that order."""
        return [self.base.fingerprint, *(s.fingerprint for s in self.sources)]

    def fingerprint_of(self, model: str) -> str:
        """The fingerprint of the base or a source, by label or ref."""
        for entry in (self.base, *self.sources):
            if model in (entry.label, entry.ref):
                return entry.fingerprint
        raise KeyError(f"no model labelled {model!r}; known: "
                       f"{[e.label for e in (self.base, *self.sources)]}")

    def __repr__(self) -> str:
        return (f"SearchSpace({self.method}, d={self.dim}, rounding={self._rounding}, "
                f"names={self.names})")

"""SearchSpace: dimensions per method, x <-> recipe round trips, della's constraint, rounding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from mmmo.errors import SpecError, StudyError
from mmmo.merging.recipe import ModelEntry, Recipe, della_valid
from mmmo.space import SearchSpace
from mmmo.spec import TASK_ARITHMETIC_METHODS, parse_spec

BASE = ModelEntry(ref="org/base", label="base", fingerprint="b" * 16)
SOURCES = tuple(ModelEntry(ref=f"org/{n}", label=n, fingerprint=c * 16)
                for n, c in (("dbl", "1"), ("rev", "2"), ("srt", "3")))


def _spec(family, merge: dict | None = None, sources: list[dict] | None = None):
    data = {
        "name": "t",
        "base": {"path": family.base.ref},
        "sources": sources or [{"path": s.ref, "name": s.label} for s in family.sources],
        "merge": merge or {},
        "objectives": {"tasks": [{"task": "gsm8k"}]},
    }
    return parse_spec(data)


def _space(method: str, bounds: dict | None = None, **kw) -> SearchSpace:
    from mmmo.spec import method_parameters

    per_model, _ = method_parameters(method)
    default = {"weight": (0.0, 1.0), "density": (0.1, 1.0), "gamma": (0.0, 0.05),
               "epsilon": (0.0, 0.2)}
    b = {s.label: {p: default[p] for p in per_model} for s in SOURCES}
    for label, over in (bounds or {}).items():
        b[label].update(over)
    return SearchSpace(method=method, base=BASE, sources=SOURCES, bounds=b, **kw)


EXPECTED_PARAMS = {
    "linear": ["weight"],
    "task_arithmetic": ["weight"],
    "ties": ["weight", "density"],
    "dare_ties": ["weight", "density"],
    "dare_linear": ["weight", "density"],
    "breadcrumbs": ["weight", "density", "gamma"],
    "breadcrumbs_ties": ["weight", "density", "gamma"],
    "della": ["weight", "density", "epsilon"],
    "della_linear": ["weight", "density", "epsilon"],
}


@pytest.mark.parametrize("method", TASK_ARITHMETIC_METHODS)
def test_from_spec_dimensions_and_round_trip(method, random_family) -> None:
    spec = _spec(random_family, {"method": method})
    space = SearchSpace.from_spec(spec)
    params = EXPECTED_PARAMS[method]
    assert space.names == [f"{s}.{p}" for s in random_family.labels for p in params]
    assert space.dim == 3 * len(params) and space.rounding == 2
    rng = np.random.default_rng(0)
    for x in [np.zeros(space.dim), np.ones(space.dim), *rng.random((30, space.dim))]:
        recipe = space.decode(x)
        assert recipe.method == method
        xr = space.round_x(x)
        assert space.decode(xr) == recipe
        assert np.array_equal(space.round_x(xr), xr)
        for values in recipe.parameters.values():
            for v in values.values():
                assert v == round(v, 2)
        again = Recipe.model_validate(json.loads(json.dumps(recipe.model_dump(mode="json"))))
        assert again == recipe and again.recipe_id == recipe.recipe_id


def test_decode_scales_rounds_and_clamps() -> None:
    space = _space("dare_ties", {"dbl": {"density": (0.001, 0.999)}})
    x = np.zeros(space.dim)
    x[space.names.index("dbl.weight")] = 0.123456
    x[space.names.index("rev.density")] = 0.5
    recipe = space.decode(x)
    assert recipe.parameters["dbl"]["weight"] == 0.12
    assert recipe.parameters["dbl"]["density"] == 0.001  # off-grid bound stays reachable
    assert recipe.parameters["rev"]["density"] == 0.55
    assert space.decode(np.ones(space.dim)).parameters["dbl"]["density"] == 0.999
    table = recipe.params_table()
    assert table["dbl.weight"] == 0.12 and set(table) == set(space.names)


def test_fixed_values_are_not_dimensions(random_family) -> None:
    spec = _spec(random_family, {"method": "dare_ties", "parameters": {"density": 0.5}},
                 [{"path": random_family.sources[0].ref, "name": "dbl",
                   "parameters": {"weight": 0.7}},
                  {"path": random_family.sources[1].ref, "name": "rev"}])
    space = SearchSpace.from_spec(spec)
    assert space.names == ["rev.weight"]
    recipe = space.decode([0.5])
    assert recipe.parameters == {"dbl": {"weight": 0.7, "density": 0.5},
                                 "rev": {"weight": 0.5, "density": 0.5}}


def test_layer_groups_are_gradient_lists(random_family) -> None:
    spec = _spec(random_family, {"method": "ties", "layer_groups": 3})
    space = SearchSpace.from_spec(spec)
    assert space.dim == 3 * 2 * 3
    assert space.names[:4] == ["dbl.weight@0", "dbl.weight@1", "dbl.weight@2", "dbl.density@0"]
    x = np.linspace(0, 1, space.dim)
    recipe = space.decode(x)
    assert isinstance(recipe.parameters["dbl"]["weight"], tuple)
    assert len(recipe.parameters["dbl"]["weight"]) == 3
    assert np.array_equal(space.round_x(space.round_x(x)), space.round_x(x))
    config = recipe.to_mergekit_config()
    assert config.models[0].parameters["weight"] == list(recipe.parameters["dbl"]["weight"])


@pytest.mark.parametrize("groups", [1, 3])
def test_della_never_invalid(groups) -> None:
    space = _space("della", {"dbl": {"density": (0.0, 1.0), "epsilon": (0.0, 0.5)},
                             "rev": {"density": (0.05, 0.99), "epsilon": (0.3, 0.5)}},
                   layer_groups=groups)
    rng = np.random.default_rng(1)
    corners = [np.zeros(space.dim), np.ones(space.dim)]
    for x in [*corners, *rng.random((400, space.dim)), *rng.integers(0, 2, (50, space.dim))]:
        recipe = space.decode(x)  # Recipe validation would raise on an invalid knot
        for values in recipe.parameters.values():
            d, e = values["density"], values["epsilon"]
            for dk, ek in zip(np.atleast_1d(d), np.atleast_1d(e), strict=True):
                assert della_valid(dk, ek), (dk, ek)
        assert space.decode(space.round_x(x)) == recipe


def test_della_fixed_epsilon_shrinks_density() -> None:
    space = _space("della", {s.label: {"epsilon": 0.15} for s in SOURCES})
    assert "dbl.epsilon" not in space.names
    i = space.names.index("dbl.density")
    assert space.bounds[0][i] == pytest.approx(0.16)
    assert space.bounds[1][i] == pytest.approx(0.84)
    for x in (np.zeros(space.dim), np.ones(space.dim)):
        space.decode(x)
    with pytest.raises(SpecError, match=r"^sources\[0\]\.parameters: no density .*della"):
        _space("della", {"dbl": {"epsilon": 0.48, "density": (0.1, 0.45)}})
    with pytest.raises(ValueError, match="della"):
        Recipe.build(method="della", base=BASE, sources=SOURCES,
                     parameters={"weight": 1.0, "density": 0.9, "epsilon": 0.2})


def test_recipe_id_is_stable_and_sensitive() -> None:
    recipe = Recipe.build(method="dare_ties", base=BASE, sources=SOURCES,
                          parameters={"weight": 1 / 3, "density": 0.5},
                          settings={"normalize": False, "int8_mask": True})
    # a golden value: the id must not change across processes, machines or releases
    assert recipe.recipe_id == GOLDEN_ID
    assert recipe.parameters["dbl"]["weight"] == 1 / 3  # explicit values are kept exact
    same = Recipe.model_validate(recipe.model_dump(mode="json"))
    assert same.recipe_id == recipe.recipe_id
    renamed = recipe.model_copy(update={"base": BASE.model_copy(update={"ref": "/x/base",
                                                                         "label": "b"})})
    assert renamed.recipe_id == recipe.recipe_id  # refs and labels are not identity
    for changed in (
        recipe.model_copy(update={"random_seed": 1}),
        recipe.model_copy(update={"dtype": "bfloat16"}),
        recipe.model_copy(update={"settings": {**recipe.settings, "int8_mask": False}}),
        recipe.model_copy(update={"sources": SOURCES[::-1]}),
        Recipe.build(method="dare_ties", base=BASE, sources=SOURCES,
                     parameters={"weight": 0.33, "density": 0.5},
                     settings={"normalize": False, "int8_mask": True}),
    ):
        assert changed.recipe_id != recipe.recipe_id
    ties = Recipe.build(method="ties", base=BASE, sources=SOURCES,
                        parameters={"weight": 0.5, "density": 0.5})
    assert ties.model_copy(update={"random_seed": 9}).recipe_id == ties.recipe_id


GOLDEN_ID = "fe81e4b953d5b29f"


def test_settings_filled_and_yaml_is_mergekit_config() -> None:
    from mergekit.config import MergeConfiguration

    recipe = Recipe.build(method="della", base=BASE, sources=SOURCES,
                          parameters={"weight": 0.5, "density": 0.5, "epsilon": 0.1})
    assert recipe.settings == {"int8_mask": False, "normalize": True, "rescale": True,
                               "lambda": 1.0}
    data = yaml.safe_load(recipe.to_yaml())
    config = MergeConfiguration.model_validate(data)
    assert data["merge_method"] == "della" and data["base_model"] == "org/base"
    assert data["parameters"]["normalize"] is True and data["dtype"] == "float32"
    assert [str(m.model) for m in config.models] == ["org/dbl", "org/rev", "org/srt"]
    linear = Recipe.build(method="linear", base=BASE, sources=SOURCES,
                          parameters={"weight": 1.0})
    assert "base_model" not in yaml.safe_load(linear.to_yaml())
    with pytest.raises(ValueError, match="not shared parameters"):
        Recipe.build(method="ties", base=BASE, sources=SOURCES,
                     parameters={"weight": 1.0}, settings={"gamma": 0.1})
    with pytest.raises(ValueError, match="required"):
        Recipe.build(method="ties", base=BASE, sources=SOURCES, parameters={"density": 0.5})


def test_baseline_uses_space_models() -> None:
    space = _space("dare_ties", settings={"normalize": False, "int8_mask": True},
                   random_seed=0)
    base = space.baseline(parameters={"weight": 1 / 3, "density": 0.5})
    assert base.settings["int8_mask"] is True and base.sources == SOURCES
    ta = space.baseline(method="task_arithmetic", parameters={"weight": 1 / 3})
    assert ta.settings["normalize"] is False and ta.method == "task_arithmetic"


def test_fixed_recipe_and_stored_recipes() -> None:
    space = _space("dare_ties", settings={"normalize": False, "int8_mask": True})
    equal = space.fixed_recipe()
    assert equal.parameters["dbl"] == {"weight": 1 / 3, "density": 0.5}
    assert equal.settings["normalize"] is False and equal.settings["int8_mask"] is True
    linear = space.fixed_recipe(method="linear")
    assert linear.parameters["rev"] == {"weight": 1 / 3} and linear.settings["normalize"]
    ta = space.fixed_recipe(method="task_arithmetic", weight=1.0, normalize=True)
    assert ta.parameters["srt"] == {"weight": 1.0} and ta.settings["normalize"] is True
    della = space.fixed_recipe(method="della")
    assert della.parameters["dbl"]["density"] == 0.5
    stored = {**equal.model_dump(mode="json"), "recipe_id": equal.recipe_id}
    assert space.recipe(stored) == equal
    with pytest.raises(StudyError, match="does not match"):
        space.recipe({**stored, "recipe_id": "0" * 16})
    assert space.fingerprints == ["b" * 16, "1" * 16, "2" * 16, "3" * 16]
    assert space.fingerprint_of("rev") == "2" * 16 == space.fingerprint_of("org/rev")
    with pytest.raises(KeyError):
        space.fingerprint_of("nope")

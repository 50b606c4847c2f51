"""Materializer: repeatable, stateless across recipes, RNG-neutral, sparsity while merging."""

from __future__ import annotations

import pytest
import torch

from mmmo.merging.materialize import Materializer, MergeError, sparsity_group
from mmmo.merging.recipe import ModelEntry, Recipe


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def untied(random_family) -> Materializer:
    return Materializer(random_family.base, random_family.sources, device="cpu")


def test_reproducible_whatever_ran_before(untied, random_family, recipe_for) -> None:
    dare = recipe_for("dare_ties", random_family)
    first = _state(untied.materialize(dare).model)
    untied.materialize(recipe_for("della", random_family))
    untied.materialize(recipe_for("linear", random_family))
    torch.manual_seed(999)
    torch.rand(1000)  # disturb the global stream: the recipe seeds its own
    again = untied.materialize(dare)
    assert untied.current_recipe_id == dare.recipe_id
    for name, tensor in _state(again.model).items():
        assert torch.equal(tensor, first[name]), name
    other_seed = untied.materialize(recipe_for("dare_ties", random_family, seed=7))
    assert not torch.equal(other_seed.model.model.layers[0].mlp.up_proj.weight,
                           first["model.layers.0.mlp.up_proj.weight"])


def test_global_rng_is_left_alone(untied, random_family, recipe_for) -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    untied.materialize(recipe_for("dare_linear", random_family))
    assert torch.equal(torch.rand(5), expected)


def test_untied_head_and_tensor_level_api(untied, random_family, recipe_for) -> None:
    """The untied lm_head is merged; a deterministic method equals mergekit's tensor API."""
    from mergekit.merge_methods.api import merge_state_dicts
    from safetensors.torch import load_file

    recipe = recipe_for("breadcrumbs_ties", random_family)
    result = untied.materialize(recipe)
    assert "lm_head" in result.sparsity_by_group
    states = [load_file(f"{m.ref}/model.safetensors")
              for m in (random_family.base, *random_family.sources)]
    params = {key: {i + 1: recipe.parameters[label][key]
                    for i, label in enumerate(random_family.labels)}
              for key in ("weight", "density", "gamma")}
    expected = merge_state_dicts(states, "breadcrumbs_ties", base=0,
                                 parameters={**params, **recipe.settings})
    for name, tensor in _state(result.model).items():
        assert torch.equal(tensor, expected[name]), name


def test_sparsity_is_l1_to_base_by_group(untied, random_family, recipe_for) -> None:
    result = untied.materialize(recipe_for("ties", random_family))
    base = untied._resident[str(untied.base_dir)]
    expected: dict[str, float] = {}
    for name, param in result.model.named_parameters():
        group = sparsity_group(name)
        diff = (param.detach().double() - base[name].double()).abs().sum().item()
        expected[group] = expected.get(group, 0.0) + diff
    assert set(result.sparsity_by_group) == {"embed_tokens", "layers.0", "layers.1", "norm",
                                             "lm_head"}
    for group, value in expected.items():
        assert result.sparsity_by_group[group] == pytest.approx(value, rel=1e-5)
    assert result.sparsity == pytest.approx(sum(expected.values()), rel=1e-5)
    assert result.timings["plan"] > 0 and result.timings["merge"] > 0


def test_dare_statistics(untied, random_family) -> None:
    """DARE keeps ~density of each task vector and rescales it to the same L1 norm."""
    src = random_family.sources[0]
    density = 0.3
    per_source = {s.label: {"weight": 1.0 if s is src else 0.0, "density": density}
                  for s in random_family.sources}
    base = untied._resident[str(untied.base_dir)]
    source = untied._resident[str(untied._paths[src.ref])]
    name = "model.layers.1.mlp.down_proj.weight"
    kept = []
    for seed in range(4):
        recipe = Recipe.build(method="dare_linear", base=random_family.base,
                              sources=random_family.sources, per_source=per_source,
                              random_seed=seed)
        merged = untied.materialize(recipe).model.get_parameter(name).detach()
        delta, task = merged - base[name], source[name] - base[name]
        frac = (delta != 0).float().mean().item()
        kept.append(delta != 0)
        n = delta.numel()
        assert abs(frac - density) < 4 * (density * (1 - density) / n) ** 0.5
        assert delta.abs().sum().item() == pytest.approx(task.abs().sum().item(), rel=1e-4)
        # kept entries are the task vector scaled by one factor (the L1 rescale)
        mask = delta != 0
        scale = (delta[mask] / task[mask]).median()
        assert torch.allclose(delta[mask], task[mask] * scale, rtol=1e-3, atol=1e-7)
        assert scale.item() == pytest.approx(1 / density, rel=0.1)
    assert not torch.equal(kept[0], kept[1])  # seeds give different masks
    union = torch.stack(kept).any(0).float().mean().item()
    assert union == pytest.approx(1 - (1 - density) ** 4, abs=0.03)


def test_rejects_foreign_and_non_finite(untied, random_family, family) -> None:
    foreign = Recipe.build(method="ties", base=random_family.base,
                           sources=[*random_family.sources[:2],
                                    family.sources[0].model_copy(update={"label": "x"})],
                           parameters={"weight": 0.5, "density": 0.5})
    with pytest.raises(ValueError, match="not resident"):
        untied.materialize(foreign)
    other_dtype = Recipe.build(method="ties", base=random_family.base,
                               sources=random_family.sources,
                               parameters={"weight": 0.5, "density": 0.5}, dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype"):
        untied.materialize(other_dtype)
    zero = Recipe.build(method="linear", base=random_family.base,
                        sources=random_family.sources, parameters={"weight": 0.0})
    with pytest.raises(MergeError, match="not finite"):
        untied.materialize(zero)
    assert untied.current_recipe_id is None and untied.last_result is None


def test_sources_subset_and_order(untied, random_family) -> None:
    """A recipe may merge a subset of the resident sources, in its own order."""
    two = Recipe.build(method="task_arithmetic", base=random_family.base,
                       sources=random_family.sources[:0:-1], parameters={"weight": 0.5})
    result = untied.materialize(two)
    assert result.sparsity > 0


def test_bfloat16_and_base_only(random_family) -> None:
    mat = Materializer(random_family.base, random_family.sources[:1], device="cpu",
                       dtype="bfloat16", check=False)
    recipe = Recipe.build(method="task_arithmetic", base=random_family.base,
                          sources=random_family.sources[:1], parameters={"weight": 0.0},
                          dtype="bfloat16")
    result = mat.materialize(recipe)
    assert result.model.dtype == torch.bfloat16
    assert result.sparsity == 0.0  # weight 0: the base itself


def test_entries_from_refs(random_family) -> None:
    entry = ModelEntry.from_ref(random_family.sources[0].ref)
    assert entry.label == "dbl" and entry.fingerprint == random_family.sources[0].fingerprint


def test_load_model_and_info(untied, random_family) -> None:
    src = random_family.sources[1]
    result = untied.load_model(src.label)
    source = untied._resident[str(untied._paths[src.ref])]
    for name, param in result.model.named_parameters():
        assert torch.equal(param, source[name]), name
    assert result.recipe_id == f"model-{src.fingerprint}" and result.sparsity > 0
    assert untied.load_model("base").sparsity == 0.0
    info = result.info()
    assert set(info) == {"recipe_id", "sparsity", "sparsity_by_group", "seconds", "timings"}
    with pytest.raises(ValueError, match="not a model"):
        untied.load_model("nope")


def test_fixture_refs_directly(family, materializer, recipe_for) -> None:
    """``fixture:`` refs resolve through mmmo.fixtures, also when config.json lacks
    ``architectures`` (inferred from model_type); same files, same merge."""
    if family.kind != "fixture-copy":
        pytest.skip("the fixture family is used directly (or is not available)")
    refs = ["fixture:models/base", *(f"fixture:models/{s.label}" for s in family.sources)]
    direct = Materializer(refs[0], refs[1:], device="cpu", check=True)
    assert [m.fingerprint for m in direct.sources] != [s.fingerprint for s in family.sources]
    recipe = recipe_for("dare_ties", family)
    ours = Recipe.build(method=recipe.method, base=direct.base, sources=direct.sources,
                        per_source=recipe.parameters, settings=recipe.settings,
                        random_seed=recipe.random_seed)
    got = _state(direct.materialize(ours).model)
    for name, tensor in _state(materializer.materialize(recipe).model).items():
        assert torch.equal(got[name], tensor), name

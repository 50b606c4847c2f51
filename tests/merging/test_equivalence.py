"""In-memory materialisation equals mergekit-yaml, bit for bit, for every method.

The random methods (DARE, DELLA) are included in the exact check: the in-memory path seeds
the same generator with the same seed and draws in mergekit-yaml's order (see
mmmo.merging.materialize), so the masks are the same. test_dare_statistics adds a statistical
check of the masks themselves (kept fraction vs density, L1 rescaling, seeds).
"""

from __future__ import annotations

import pytest
import torch

from mmmo.spec import TASK_ARITHMETIC_METHODS


@pytest.mark.parametrize("method", TASK_ARITHMETIC_METHODS)
def test_in_memory_equals_mergekit_yaml(method, family, materializer, mergekit_runs,
                                        recipe_for) -> None:
    recipe = recipe_for(method, family)
    result = materializer.materialize(recipe)
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    reference = mergekit_runs.wait(method)

    unique = {name for name, _ in result.model.named_parameters()}
    assert unique <= set(reference), f"mergekit-yaml wrote no {sorted(unique - set(reference))}"
    for name, tensor in reference.items():
        assert state[name].dtype == tensor.dtype, name
        assert torch.equal(state[name], tensor), f"{method}: {name} differs from mergekit-yaml"

    base = materializer._resident[str(materializer.base_dir)]
    expected = sum(float((reference[n].float() - base[n].float()).abs().sum()) for n in unique)
    assert result.sparsity == pytest.approx(expected, rel=1e-6)
    assert sum(result.sparsity_by_group.values()) == pytest.approx(result.sparsity, rel=1e-12)
    assert result.recipe_id == recipe.recipe_id and result.seconds > 0

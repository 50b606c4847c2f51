"""Materializer without a model (skeleton=False): streamed tensors equal materialize's, bit for bit."""

from __future__ import annotations

import pytest
import torch

from mmmo.merging.materialize import Materializer


def _collect() -> tuple[dict[str, torch.Tensor], object]:
    out: dict[str, torch.Tensor] = {}

    def sink(name: str, tensor: torch.Tensor) -> None:
        assert name not in out, f"{name} handed out twice"
        out[name] = tensor.detach().clone()

    return out, sink


@pytest.fixture(scope="module")
def streams(family) -> Materializer:
    return Materializer(family.base, family.sources, device="cpu", skeleton=False)


@pytest.fixture(scope="module")
def untied_streams(random_family) -> Materializer:
    return Materializer(random_family.base, random_family.sources, device="cpu",
                        skeleton=False)


@pytest.fixture(scope="module")
def untied_model(random_family) -> Materializer:
    return Materializer(random_family.base, random_family.sources, device="cpu")


@pytest.mark.parametrize("method", ["dare_ties", "della", "linear"])
def test_stream_equals_materialize(method, family, materializer, streams, recipe_for) -> None:
    """Tied family: every parameter (no tied lm_head), same values, same sparsity sums."""
    assert streams.model is None
    recipe = recipe_for(method, family)
    got, sink = _collect()
    result = streams.stream(recipe, sink)
    expected = materializer.materialize(recipe)
    params = dict(expected.model.named_parameters())
    assert list(got) != [] and set(got) == set(params)
    assert set(streams.tensor_layout()) == set(params)
    for name, param in params.items():
        assert got[name].dtype == param.dtype and torch.equal(got[name], param), name
    assert result.model is None and result.recipe_id == recipe.recipe_id
    assert result.sparsity == expected.sparsity
    assert result.sparsity_by_group == expected.sparsity_by_group


def test_untied_head_and_models(random_family, untied_streams, untied_model,
                                recipe_for) -> None:
    """Untied family: lm_head is streamed; stream_model gives load_model's tensors."""
    recipe = recipe_for("ties", random_family)
    got, sink = _collect()
    result = untied_streams.stream(recipe, sink)
    expected = untied_model.materialize(recipe)
    assert "lm_head.weight" in got and result.sparsity == expected.sparsity
    for name, param in expected.model.named_parameters():
        assert torch.equal(got[name], param), name
    for label in ("base", random_family.sources[1].label):
        got, sink = _collect()
        streamed = untied_streams.stream_model(label, sink)
        loaded = untied_model.load_model(label)
        for name, param in loaded.model.named_parameters():
            assert torch.equal(got[name], param), name
        assert streamed.recipe_id == loaded.recipe_id
        assert streamed.sparsity == pytest.approx(loaded.sparsity, rel=1e-12, abs=0)
    with pytest.raises(ValueError, match="skeleton=False"):
        untied_streams.materialize(recipe)
    with pytest.raises(ValueError, match="not a model"):
        untied_streams.stream_model("nope", sink)
